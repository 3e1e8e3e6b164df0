"""What the released code took from Blocks: step rules, the main loop, checkpoints.

Randomness is derived, not stored: minibatch order of epoch e comes from
(seed, e) and the noise of iteration i from (seed, i). A checkpoint therefore
holds counters instead of generator states, and a resumed run repeats an
uninterrupted one exactly.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import contextlib
import functools
import glob
import io
import json
import os
import pickle
import shlex
import signal
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np
import theano
import theano.tensor as T

import parallel
import rundirs

floatX = theano.config.floatX


def shared_scalar(value, name, dtype=floatX):
    return theano.shared(np.asarray(value, dtype=dtype), name=name)


def shared_like(p, suffix):
    return theano.shared(np.zeros_like(p.get_value()), name='{}.{}'.format(p.name, suffix))


# ---------------------------------------------------------------- step rules

class RMSProp:
    """RMSProp as in Blocks, which the released code used (decay 0.9, lr 1e-3).

    ms <- decay ms + (1 - decay) g^2;  step = lr g / sqrt(max(ms, 1 / max_scaling^2)).
    The released training passed max_scaling=1e10 (the code preset does too,
    presets.STEP_RULE_ARGS); the default 1e5 is ours, for the paper preset, whose
    paper trained with SFO instead: steps of parameters whose gradients stay below 1e-5
    are then smaller than lr.
    """

    def __init__(self, learning_rate=1e-3, decay=0.9, max_scaling=1e5):
        self.lr = shared_scalar(learning_rate, 'optimizer.lr')
        self.decay = decay
        self.eps = 1.0 / max_scaling ** 2
        self.state = []

    def steps(self, params, grads):
        """Returns (steps, state_updates) for parameters and their gradients."""
        steps, updates = [], []
        for p, g in zip(params, grads):
            ms = shared_like(p, 'rms')
            self.state.append(ms)
            new_ms = self.decay * ms + (1 - self.decay) * T.sqr(g)
            steps.append(self.lr * g / T.sqrt(T.maximum(new_ms, self.eps)))
            updates.append((ms, new_ms))
        return steps, updates


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction; an option, not the paper's choice."""

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr = shared_scalar(learning_rate, 'optimizer.lr')
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.t = shared_scalar(0, 'optimizer.t')
        self.state = [self.t]

    def steps(self, params, grads):
        t = self.t + 1
        scale = self.lr * T.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        steps, updates = [], [(self.t, t)]
        for p, g in zip(params, grads):
            m, v = shared_like(p, 'adam_m'), shared_like(p, 'adam_v')
            self.state += [m, v]
            new_m = self.beta1 * m + (1 - self.beta1) * g
            new_v = self.beta2 * v + (1 - self.beta2) * T.sqr(g)
            steps.append(scale * new_m / (T.sqrt(new_v) + self.eps))
            updates += [(m, new_m), (v, new_v)]
        return steps, updates


STEP_RULES = {'rmsprop': RMSProp, 'adam': Adam}


def step_rule(optimizer, lr, rule_args):
    """The step rule `optimizer` (a key of STEP_RULES) with learning rate lr and the keyword
    arguments rule_args gives it ({optimizer: {key: value}}, presets.STEP_RULE_ARGS of a fidelity)."""
    return STEP_RULES[optimizer](lr, **rule_args.get(optimizer, {}))


NONFINITE = ('drop_step', 'zero_gradient')  # what a step does with a NaN or inf gradient


def descent_updates(cost, params, step_rule, nonfinite='drop_step', average=None):
    """Gradient-descent updates on `cost` (gradient_updates of its gradients)."""
    return gradient_updates(T.grad(cost, params), params, step_rule, nonfinite, average)


def gradient_updates(grads, params, step_rule, nonfinite='drop_step', average=None):
    """Updates that take one step of `step_rule` along `grads`, and the counter `n_nonfinite`
    (returned) of the steps where some gradient entry was NaN or inf. With `average`
    (ParameterAverage), its averages follow the new parameters.

    nonfinite='drop_step' (ours): such a step is dropped: no parameter, no optimiser state
    and no average changes. 'zero_gradient' (the released code's CompositeRule([RemoveNotFinite(), RMSProp]):
    Blocks' rule first, on the raw gradient, one parameter at a time): a parameter whose
    gradient sums to NaN or inf gets the gradient (1 - scaler) x parameter = 0 (scaler 1)
    instead, so the step rule takes a zero step for it (RMSProp: its running mean square
    decays by the factor `decay`), and every other parameter steps as usual."""
    if nonfinite not in NONFINITE:
        raise ValueError('nonfinite must be one of {}, not {!r}'.format(NONFINITE, nonfinite))
    if nonfinite == 'zero_gradient':
        return zeroed_gradient_updates(grads, params, step_rule, average)
    norm2 = sum(T.sum(T.sqr(g)) for g in grads)
    finite = T.and_(T.neq(T.isnan(norm2), 1), T.neq(T.isinf(norm2), 1))
    steps, state_updates = step_rule.steps(params, grads)
    n_nonfinite = shared_scalar(0, 'optimizer.n_nonfinite', 'int64')
    updates = [(p, T.switch(finite, p - s, p)) for p, s in zip(params, steps)]
    if average is not None:
        updates += average.updates([new for _, new in updates], finite)
    updates += [(v, T.switch(finite, new, v)) for v, new in state_updates]
    updates.append((n_nonfinite, n_nonfinite + T.switch(finite, 0, 1)))
    return updates, n_nonfinite


def zeroed_gradient_updates(grads, params, step_rule, average=None):
    """gradient_updates with nonfinite='zero_gradient'."""
    bad = [T.or_(T.isnan(s), T.isinf(s)) for s in (T.sum(g) for g in grads)]
    grads = [T.switch(b, T.zeros_like(g), g) for b, g in zip(bad, grads)]
    steps, state_updates = step_rule.steps(params, grads)
    n_nonfinite = shared_scalar(0, 'optimizer.n_nonfinite', 'int64')
    updates = [(p, p - s) for p, s in zip(params, steps)]
    if average is not None:
        updates += average.updates([new for _, new in updates], T.constant(1, dtype='int8'))
    updates += state_updates
    updates.append((n_nonfinite, n_nonfinite + T.cast(functools.reduce(T.or_, bad), 'int64')))
    return updates, n_nonfinite


def flat_gradient_step(params, step_rule, nonfinite='drop_step', average=None):
    """(fn, n_nonfinite): fn(g) takes one step along the flat float32 vector g, all
    parameters' gradients one after the other (what data-parallel training adds up over
    processes), and returns the counter of steps with a non-finite gradient (gradient_updates:
    dropped, or the affected parameters' gradients zeroed)."""
    flat = T.vector('flat_gradient')
    sizes = np.cumsum([0] + [p.get_value().size for p in params])
    grads = [flat[a:b].reshape(p.shape) for p, a, b in zip(params, sizes[:-1], sizes[1:])]
    updates, n_nonfinite = gradient_updates(grads, params, step_rule, nonfinite, average)
    return theano.function([flat], n_nonfinite, updates=updates), n_nonfinite


AVERAGE_PREFIX = 'ema/'  # the average of parameter <name> is the shared variable 'ema/<name>'


class ParameterAverage:
    """An exponential moving average of the parameters, for evaluation and sampling (not
    in the paper or the released code; Polyak averaging as diffusion models use it):
    a <- r_n a + (1 - r_n) p after each step taken, with r_n = min(rate, (1 + n) / (10 + n))
    at the n-th step, so that early on the average follows the parameters instead of
    remembering their initial values for 1 / (1 - rate) steps.

    Its values ('ema/<name>') and count ('ema.n') are shared variables that checkpoints
    carry; `swapped()` puts them in the parameters' place for a while.
    """

    def __init__(self, params, rate):
        self.params, self.rate = params, rate
        self.averages = [theano.shared(p.get_value(), name=AVERAGE_PREFIX + p.name) for p in params]
        self.n = shared_scalar(0, 'ema.n', 'int64')
        self.state = self.averages + [self.n]

    def updates(self, new_params, finite):
        n = T.cast(self.n, floatX)
        r = T.minimum(np.float32(self.rate), (1 + n) / (10 + n))
        out = [(a, T.switch(finite, r * a + (1 - r) * p, a)) for a, p in zip(self.averages, new_params)]
        return out + [(self.n, self.n + T.switch(finite, 1, 0))]

    @contextlib.contextmanager
    def swapped(self):
        """The averages in the parameters' place inside the `with` block."""
        current = [p.get_value() for p in self.params]
        for p, a in zip(self.params, self.averages):
            p.set_value(a.get_value())
        try:
            yield
        finally:
            for p, value in zip(self.params, current):
                p.set_value(value)


@contextlib.contextmanager
def averaged(average):
    """ParameterAverage.swapped(), or nothing when there is no average."""
    if average is None:
        yield
    else:
        with average.swapped():
            yield


# ---------------------------------------------------------------- checkpoints
#
# A checkpoint is one .npz file (a zip of .npy arrays, np.load(path, allow_pickle=False)):
#   'meta'           a 0-d unicode array holding JSON: {"format": CHECKPOINT_FORMAT,
#                    "version": 1, "config": the run's settings, "status": its counters}
#   'shared/<name>'  the value of each Theano shared variable (parameters, optimiser
#                    state, learning rate, counters), by name.
# The per-minibatch log is not inside: it is RUN_DIR/log.jsonl, and status['log_bytes']
# is its length when the checkpoint was written (a resumed run truncates it there).

CHECKPOINT_FORMAT = 'diffusion-thermodynamics checkpoint'
CHECKPOINT_VERSION = 1
SHARED_PREFIX = 'shared/'


def save_checkpoint(path, state):
    """Write state {'shared': {name: array}, 'config': dict, 'status': dict} to `path`
    atomically: the file is written under a temporary name, synced and renamed, so a
    crash or kill -9 at any moment leaves the previous checkpoint intact."""
    meta = {'format': CHECKPOINT_FORMAT, 'version': CHECKPOINT_VERSION,
            'config': state.get('config', {}), 'status': state['status']}
    arrays = {SHARED_PREFIX + name: np.asarray(v) for name, v in state['shared'].items()}
    arrays['meta'] = np.array(rundirs.to_json(meta))
    with rundirs.naming(path):
        for stale in glob.glob(glob.escape(path) + '.tmp*'):  # left by a process killed mid-write
            os.remove(stale)
        tmp = '{}.tmp{}'.format(path, os.getpid())
        try:
            with open(tmp, 'wb') as f:
                archive = io.BytesIO()  # made in memory: a full disk then fails in one plain write
                np.savez(archive, **arrays)
                f.write(archive.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def finite(arrays):
    """True when no floating-point array of `arrays` holds NaN or inf."""
    return all(np.isfinite(a).all() for a in map(np.asarray, arrays) if np.issubdtype(a.dtype, np.floating))


def checkpoint_in(path):
    """The checkpoint file `path`, or the one in the run directory `path` (checkpoint.npz,
    else an old checkpoint.pkl)."""
    if not os.path.isdir(path):
        return path
    for name in ('checkpoint.npz', 'checkpoint.pkl'):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    return os.path.join(path, 'checkpoint.npz')


def load_checkpoint(path):
    """{'shared', 'config', 'status'} of a checkpoint; ValueError (one line, with the path)
    when the file is missing, truncated, corrupt or not a checkpoint of this project.
    A checkpoint of the old pickle format is read with a restricted unpickler and a warning."""
    try:
        with open(path, 'rb') as f:
            magic = f.read(2)
    except OSError as e:
        raise ValueError('cannot read checkpoint {}: {}'.format(path, e.strerror or e))
    if magic[:1] == b'\x80':  # pickle protocol 2+
        return load_pickle_checkpoint(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError('a single array, not an .npz archive')
        with archive as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop('meta')))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError('{} is not a checkpoint of this project, or is damaged ({})'.format(
            path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if not isinstance(meta, dict) or meta.get('format') != CHECKPOINT_FORMAT:
        raise ValueError('{} is not a checkpoint of this project'.format(path))
    if meta.get('version') != CHECKPOINT_VERSION:
        raise ValueError('{} is a checkpoint of format version {}; this code reads version {}'.format(
            path, meta.get('version'), CHECKPOINT_VERSION))
    require(meta, path, CHECKPOINT_FIELDS)
    shared = {k[len(SHARED_PREFIX):]: v for k, v in arrays.items() if k.startswith(SHARED_PREFIX)}
    return {'shared': shared, 'config': meta['config'], 'status': meta['status']}


# What every checkpoint holds; train.py, experiments.py and evaluate.py ask for more.
CHECKPOINT_FIELDS = (('config', dict), ('status', dict), ('status.iterations_done', int))
MISSING = object()


def require(state, path, fields):
    """ValueError (one line naming the file and the field) unless every field, a dotted
    path into the dict `state` ('config.args.seed'), is there and has its type (a type or
    a tuple of types)."""
    for name, kind in fields:
        value = state
        for key in name.split('.'):
            value = value.get(key, MISSING) if isinstance(value, dict) else MISSING
        if value is MISSING:
            raise ValueError('{} is not a complete checkpoint of this project: it has no {}'.format(path, name))
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError('{} is not a checkpoint of this project, or is damaged: {} is {!r}'.format(
                path, name, value))


def load_pickle_checkpoint(path, warn=True):
    """A checkpoint of the old format (a pickled dict with the whole per-minibatch log),
    read with rundirs.ArrayUnpickler, which builds only arrays and plain values: a pickle can
    run code when loaded. Returns the new form; the log's evaluations are kept."""
    if warn:
        print('warning: {} is an old pickle checkpoint; pickles can run code when loaded, so it is '
              'read with an unpickler that accepts arrays and plain values only. Convert it once: '
              'python train.py --convert-checkpoint {}'.format(path, shlex.quote(path)),
              file=sys.stderr, flush=True)
    try:
        with open(path, 'rb') as f:
            state = rundirs.ArrayUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise ValueError('cannot read checkpoint {}: {}'.format(path, e))
    if not isinstance(state, dict) or not isinstance(state.get('shared'), dict):
        raise ValueError('{} is not a checkpoint of this project'.format(path))
    require(dict(state, config=state.get('config', {})), path, CHECKPOINT_FIELDS)
    status = dict(state['status'], log_bytes=None,
                  evaluations=[evaluation_record(r) for r in state.get('log', []) if EVALUATION_KEY in r])
    return {'shared': state['shared'], 'config': state.get('config', {}), 'status': status}


def convert_checkpoint(path, overwrite=False):
    """Write the .npz form of the old pickle checkpoint `path` beside it (same name,
    .npz); returns the new path. log_bytes is found from RUN_DIR/log.jsonl if it is there.
    ValueError when the .npz exists already, unless `overwrite`."""
    if not os.path.isfile(path):
        raise ValueError('cannot read checkpoint {}: no such file'.format(path))
    state = load_pickle_checkpoint(path, warn=False)
    log = os.path.join(os.path.dirname(os.path.abspath(path)), 'log.jsonl')
    if os.path.exists(log):
        state['status']['log_bytes'] = log_offset(log, state['status']['iterations_done'])
    target = os.path.splitext(path)[0] + '.npz'
    if os.path.exists(target) and not overwrite:
        raise ValueError('{} exists already; add --overwrite to replace it'.format(target))
    save_checkpoint(target, state)
    return target


def log_offset(path, iteration):
    """The byte length of the first lines of the JSON-lines log `path` whose 'iteration' is
    at most `iteration` (where a resumed run's log is cut)."""
    offset = 0
    with open(path, 'rb') as f:
        for line in f:
            try:
                if json.loads(line)['iteration'] > iteration:
                    break
            except (ValueError, KeyError):
                break
            offset += len(line)
    return offset


# ---------------------------------------------------------------- evaluations kept across resumes

EVALUATION_KEY = 'heldout_K_bits'


def evaluation_record(record):
    """The part of a log record that the K curve needs (kept in the checkpoint's status)."""
    return {k: v for k, v in record.items()
            if k in ('iteration', 'wall_s') or k.startswith('heldout_')}


# ---------------------------------------------------------------- main loop

class MainLoop:
    """Runs `step` over the minibatches of `stream` and calls the extensions.

    step(batch, rng) -> dict of monitored floats for that minibatch.
    shared: name -> Theano shared variable; everything a checkpoint must restore
        (parameters, optimiser state, learning rate, counters).
    stream.epoch(e, start) yields the minibatches of epoch e from index `start`.
    Extension events: 'before_training', 'batch', 'epoch', 'after_training', 'interrupt'.
    `record` is the newest minibatch's dict of values; extensions add theirs to it.
    SIGINT (Ctrl-C) and SIGTERM (what schedulers send before killing) finish the current
    minibatch, then the 'interrupt' event writes a checkpoint; a second one raises
    Interrupted at once. comm (parallel.world()): with several processes, a stop or an
    interrupt on any of them stops all after the same minibatch (_stop_agreed).
    An extension that finds the run non-finite sets `nonfinite` (why) and stops it.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, step, stream, shared, extensions, seed, config=None, comm=None):
        self.step, self.stream, self.shared = step, stream, shared
        self.comm = comm or parallel.SingleProcess()
        self.extensions = extensions
        self.config = config or {}
        self.status = {'iterations_done': 0, 'epochs_done': 0, 'batch_in_epoch': 0,
                       'seed': seed, 'wall_s': 0.0, 'resumed_from': None, 'log_bytes': 0,
                       'evaluations': []}
        self.record = {}
        self.stop_requested = False
        self.interrupted = False
        self.signalled = None  # the signal received, if any (set by _on_signal alone)
        self.nonfinite = None

    def state_dict(self):
        return {'shared': {n: v.get_value() for n, v in self.shared.items()},
                'status': dict(self.status), 'config': self.config}

    def load_state_dict(self, state):
        missing = set(self.shared) - set(state['shared'])
        if missing:
            raise ValueError('checkpoint lacks {}; was it made with other --model-args?'
                             .format(', '.join(sorted(missing))))
        for name, var in self.shared.items():
            value = state['shared'][name]
            if np.shape(value) != np.shape(var.get_value()):
                raise ValueError('checkpoint shape of {} is {}, the model has {}'.format(
                    name, np.shape(value), np.shape(var.get_value())))
            var.set_value(np.asarray(value, dtype=var.dtype))
        self.status.update(state['status'])

    def rng(self):
        """The noise generator of the current iteration, derived from (seed, iteration)."""
        return np.random.default_rng([self.status['seed'], self.status['iterations_done']])

    def run(self):
        previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        try:
            self._notify('before_training')
            while not self._stop_agreed():
                self._run_epoch()
            self._notify('interrupt' if self.interrupted else 'after_training')
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.signalled and not self.interrupted:  # came after the last agreement: the checkpoint is written
            raise Interrupted(self.signalled)
        return self

    def _run_epoch(self):
        s = self.status
        n_batches = 0
        for batch in self.stream.epoch(s['epochs_done'], s['batch_in_epoch']):
            n_batches += 1
            start = time.time()
            values = self.step(batch, self.rng())
            s['iterations_done'] += 1
            s['batch_in_epoch'] += 1
            step_s = time.time() - start
            s['wall_s'] += step_s
            self.record = dict(values, iteration=s['iterations_done'], epoch=s['epochs_done'],
                               step_s=step_s)
            self._notify('batch')
            if self._stop_agreed():
                return
        if n_batches == 0 and s['batch_in_epoch'] == 0:
            raise ValueError('the data stream gave no minibatch in epoch {}'.format(s['epochs_done']))
        s['epochs_done'] += 1
        s['batch_in_epoch'] = 0
        self._notify('epoch')

    def _notify(self, event):
        for ext in self.extensions:
            if ext.due(event, self.status):
                start = time.time()
                ext(self, event)
                if event in ('batch', 'epoch'):
                    self.status['wall_s'] += time.time() - start

    def _stop_agreed(self):
        """Whether every process stops now: a stop requested or a signal received on any of
        them (a reduction; one process's own flags). The reduced flags are combined with
        the loop's, never assigned: a signal that arrives while the reduction runs is kept
        in `signalled` and stops the run after the next minibatch."""
        flags = np.array([self.stop_requested, self.signalled is not None], np.int32)
        stop, interrupted = self.comm.allreduce_sum(flags) > 0
        self.stop_requested = self.stop_requested or bool(stop)
        self.interrupted = self.interrupted or bool(interrupted)
        return self.stop_requested or self.interrupted

    def _on_signal(self, signum, frame):
        if self.signalled:  # a second Ctrl-C stops at once
            raise Interrupted(signum)
        if self.comm.is_writer:
            print('\n{}: finishing this minibatch and writing a checkpoint (Ctrl-C again to abort '
                  'without one).'.format(signal.Signals(signum).name), file=sys.stderr, flush=True)
        self.signalled = signum


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM where no minibatch can be finished first: while a run is set up
    or compiled, during its final evaluation, or a second signal during training."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_raise():
    """SIGINT and SIGTERM raise Interrupted inside this block (MainLoop.run takes them
    over while it runs)."""
    def raise_interrupted(signum, frame):
        raise Interrupted(signum)
    previous = {s: signal.signal(s, raise_interrupted) for s in MainLoop.SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
