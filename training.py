"""What the released code took from Blocks: step rules, the main loop, checkpoints.

Randomness is derived, not stored: minibatch order of epoch e comes from
(seed, e) and the noise of iteration i from (seed, i). A checkpoint therefore
holds counters instead of generator states, and a resumed run repeats an
uninterrupted one exactly.
"""
import util  # noqa: F401  (configures Theano before it is imported)

import os
import pickle
import signal
import sys
import time

import numpy as np
import theano
import theano.tensor as T

floatX = theano.config.floatX


def shared_scalar(value, name, dtype=floatX):
    return theano.shared(np.asarray(value, dtype=dtype), name=name)


def shared_like(p, suffix):
    return theano.shared(np.zeros_like(p.get_value()), name='{}.{}'.format(p.name, suffix))


# ---------------------------------------------------------------- step rules

class RMSProp:
    """RMSProp as in Blocks, which the released code used (decay 0.9, lr 1e-3).

    ms <- decay ms + (1 - decay) g^2;  step = lr g / sqrt(max(ms, 1 / max_scaling^2)).
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


def descent_updates(cost, params, step_rule):
    """Gradient-descent updates on `cost`; a step whose gradient is not finite is dropped.

    When any gradient entry is NaN or inf, no parameter and no optimiser state
    changes, and the counter `n_nonfinite` (returned) goes up by one.
    """
    grads = T.grad(cost, params)
    norm2 = sum(T.sum(T.sqr(g)) for g in grads)
    finite = T.and_(T.neq(T.isnan(norm2), 1), T.neq(T.isinf(norm2), 1))
    steps, state_updates = step_rule.steps(params, grads)
    n_nonfinite = shared_scalar(0, 'optimizer.n_nonfinite', 'int64')
    updates = [(p, T.switch(finite, p - s, p)) for p, s in zip(params, steps)]
    updates += [(v, T.switch(finite, new, v)) for v, new in state_updates]
    updates.append((n_nonfinite, n_nonfinite + T.switch(finite, 0, 1)))
    return updates, n_nonfinite


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path, state):
    """Pickle `state` to `path` atomically: a failed write leaves the old file intact."""
    tmp = '{}.tmp{}'.format(path, os.getpid())
    try:
        with open(tmp, 'wb') as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """Read a checkpoint; raises ValueError with the path when it is not one."""
    try:
        with open(path, 'rb') as f:
            state = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as e:
        raise ValueError('cannot read checkpoint {}: {}'.format(path, e))
    if not isinstance(state, dict) or 'shared' not in state or 'status' not in state:
        raise ValueError('{} is not a checkpoint of this project'.format(path))
    return state


# ---------------------------------------------------------------- main loop

class MainLoop:
    """Runs `step` over the minibatches of `stream` and calls the extensions.

    step(batch, rng) -> dict of monitored floats for that minibatch.
    shared: name -> Theano shared variable; everything a checkpoint must restore
        (parameters, optimiser state, learning rate, counters).
    stream.epoch(e, start) yields the minibatches of epoch e from index `start`.
    Extension events: 'before_training', 'batch', 'epoch', 'after_training'.
    """

    def __init__(self, step, stream, shared, extensions, seed, config=None):
        self.step, self.stream, self.shared = step, stream, shared
        self.extensions = extensions
        self.config = config or {}
        self.status = {'iterations_done': 0, 'epochs_done': 0, 'batch_in_epoch': 0,
                       'seed': seed, 'wall_s': 0.0, 'resumed_from': None}
        self.log = []  # one dict per minibatch; extensions add their values to the newest
        self.stop_requested = False
        self.interrupted = False

    @property
    def record(self):
        return self.log[-1] if self.log else {}

    def state_dict(self):
        return {'shared': {n: v.get_value() for n, v in self.shared.items()},
                'status': dict(self.status), 'log': list(self.log), 'config': self.config}

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
            var.set_value(value)
        self.status.update(state['status'])
        self.log = list(state['log'])

    def rng(self):
        """The noise generator of the current iteration, derived from (seed, iteration)."""
        return np.random.default_rng([self.status['seed'], self.status['iterations_done']])

    def run(self):
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._notify('before_training')
            while not self.stop_requested and not self.interrupted:
                self._run_epoch()
            if self.interrupted:
                self._notify('interrupt')
            else:
                self._notify('after_training')
        finally:
            signal.signal(signal.SIGINT, previous)
        return self

    def _run_epoch(self):
        s = self.status
        for batch in self.stream.epoch(s['epochs_done'], s['batch_in_epoch']):
            start = time.time()
            values = self.step(batch, self.rng())
            s['iterations_done'] += 1
            s['batch_in_epoch'] += 1
            step_s = time.time() - start
            s['wall_s'] += step_s
            self.log.append(dict(values, iteration=s['iterations_done'], epoch=s['epochs_done'],
                                 step_s=step_s))
            self._notify('batch')
            if self.stop_requested or self.interrupted:
                return
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

    def _on_sigint(self, signum, frame):
        if self.interrupted:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        print('\nInterrupted: finishing this minibatch and writing a checkpoint '
              '(Ctrl-C again to abort without one).', file=sys.stderr, flush=True)
        self.interrupted = True
