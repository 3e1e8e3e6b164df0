"""The main loop: minibatches through the training step, extensions around it, and the
signals (Ctrl-C, SIGTERM) that end it with a checkpoint."""
import signal
import sys
import time
from contextlib import contextmanager

import numpy as np

import parallel

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

    def load_state_dict(self, state, begun=()):
        """Set the shared variables and the status from a checkpoint's `state`; those named
        in `begun` start in this session (an average of the parameters begun at a resume):
        they keep their values, and the checkpoint may lack them."""
        missing = set(self.shared) - set(state['shared']) - set(begun)
        if missing:
            raise ValueError('checkpoint lacks {}; was it made with other --model-args?'
                             .format(', '.join(sorted(missing))))
        for name, var in self.shared.items():
            if name in begun:
                continue
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
