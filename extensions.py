"""What runs around the training steps: printing, the JSON-lines log, checkpoints,
stopping, the learning-rate schedule, evaluation and plots.

Each extension says when it is due (every N batches or epochs, before or after
training) and is called with the main loop.
"""
import json
import math
import sys

import numpy as np

import training


class Extension:
    """Base: due on the events and periods given at construction."""

    def __init__(self, every_n_batches=None, every_n_epochs=None,
                 before_training=False, after_training=False, on_interrupt=False):
        self.every_n_batches = every_n_batches
        self.every_n_epochs = every_n_epochs
        self.events = {'before_training': before_training, 'after_training': after_training,
                       'interrupt': on_interrupt}

    def due(self, event, status):
        if event == 'batch':
            return bool(self.every_n_batches) and status['iterations_done'] % self.every_n_batches == 0
        if event == 'epoch':
            return bool(self.every_n_epochs) and status['epochs_done'] % self.every_n_epochs == 0
        return self.events.get(event, False)

    def __call__(self, loop, event):
        raise NotImplementedError


class FinishAfter(Extension):
    """Stop after a number of minibatches, epochs or seconds, counted from the run's start."""

    def __init__(self, max_batches=None, max_epochs=None, max_seconds=None):
        super().__init__(every_n_batches=1, every_n_epochs=1, before_training=True)
        self.max_batches, self.max_epochs, self.max_seconds = max_batches, max_epochs, max_seconds

    def __call__(self, loop, event):
        s = loop.status
        if ((self.max_batches is not None and s['iterations_done'] >= self.max_batches)
                or (self.max_epochs is not None and s['epochs_done'] >= self.max_epochs)
                or (self.max_seconds is not None and s['wall_s'] >= self.max_seconds)):
            loop.stop_requested = True


class LearningRateSchedule(Extension):
    """The released code's decay (SPEC section 4): every 500 minibatches
    lr <- max(lr * exp(ln 0.1 / 1000), 1e-4)."""

    def __init__(self, lr, every_n_batches=500, factor=math.exp(math.log(0.1) / 1000), floor=1e-4):
        super().__init__(every_n_batches=every_n_batches)
        self.lr, self.factor, self.floor = lr, factor, floor

    @classmethod
    def for_run(cls, lr, lr_start, lr_final, max_batches, every_n_batches=100):
        """The released code's schedule, or with lr_final an exponential decay from
        lr_start to lr_final over max_batches (our choice for the toy sets)."""
        if lr_final is None or not max_batches:
            return cls(lr)
        factor = (lr_final / lr_start) ** (every_n_batches / max_batches)
        return cls(lr, every_n_batches, factor, floor=lr_final)

    def __call__(self, loop, event):
        new = max(float(self.lr.get_value()) * self.factor, self.floor)
        self.lr.set_value(np.asarray(new, dtype=self.lr.dtype))


class JSONLog(Extension):
    """Appends every minibatch's monitored values to RUN_DIR/log.jsonl.

    Before training the file is rewritten from the loop's log, so that after a
    resume it holds exactly the records up to the checkpoint, then the new ones.
    """

    def __init__(self, path):
        super().__init__(every_n_batches=1, before_training=True, after_training=True,
                         on_interrupt=True)
        self.path = path
        self.written = 0

    def __call__(self, loop, event):
        if event == 'before_training':
            self.written = 0
            open(self.path, 'w').close()
        if event == 'batch' and loop.status['iterations_done'] % 50 and not loop.stop_requested:
            return  # buffer: write in groups of 50 records
        with open(self.path, 'a') as f:
            for rec in loop.log[self.written:]:
                f.write(json.dumps(rec, default=float) + '\n')
        self.written = len(loop.log)


class Printing(Extension):
    """One progress line: iteration, epoch, mean of each monitored value since last time."""

    def __init__(self, every_n_batches, stream=sys.stdout):
        super().__init__(every_n_batches=every_n_batches, after_training=True)
        self.stream = stream
        self.last = 0

    def __call__(self, loop, event):
        recent = loop.log[self.last:] or loop.log[-1:]
        self.last = len(loop.log)
        if not recent:
            return
        keys = [k for k in recent[-1] if k not in ('iteration', 'epoch')]
        means = {k: np.mean([r[k] for r in recent if isinstance(r.get(k), (int, float))])
                 for k in keys if isinstance(recent[-1][k], (int, float))}
        s = loop.status
        parts = ['iter {:d}'.format(s['iterations_done']), 'epoch {:d}'.format(s['epochs_done']),
                 '{:.0f}s'.format(s['wall_s'])]
        parts += ['{} {:.4g}'.format(k, v) for k, v in means.items()]
        print(' | '.join(parts), file=self.stream, flush=True)


class Checkpoint(Extension):
    """Writes the loop's full state to `path` (atomically), periodically and at the end.

    On Ctrl-C it writes one and says how to resume.
    """

    def __init__(self, path, every_n_batches=None, resume_hint=None):
        super().__init__(every_n_batches=every_n_batches, after_training=True, on_interrupt=True)
        self.path = path
        self.resume_hint = resume_hint

    def __call__(self, loop, event):
        training.save_checkpoint(self.path, loop.state_dict())
        if event == 'interrupt':
            print('Checkpoint written to {} after {} minibatches. Resume with:\n  {}'.format(
                self.path, loop.status['iterations_done'],
                self.resume_hint or '--resume_file ' + self.path), file=sys.stderr, flush=True)


def write_results(path, loop, extra):
    """RUN_DIR/results.json: data set, seed, iterations, wall time, and `extra`."""
    import util
    s = loop.status
    out = {'seed': s['seed'], 'iterations': s['iterations_done'], 'epochs': s['epochs_done'],
           'wall_s': round(s['wall_s'], 2), 'resumed_from': s['resumed_from']}
    out.update(loop.config.get('results', {}))
    out.update(extra)
    util.write_json(path, out)
    return out


class NonFiniteGuard(Extension):
    """Stops training when `patience` minibatches in a row had a non-finite gradient
    (each such step is dropped by the step rule; this says so instead of spinning)."""

    def __init__(self, patience=100):
        super().__init__(every_n_batches=1)
        self.patience = patience
        self.streak = 0
        self.last = None

    def __call__(self, loop, event):
        count = loop.record.get('n_nonfinite', 0)
        self.streak = self.streak + 1 if self.last is not None and count > self.last else 0
        self.last = count
        if self.streak >= self.patience:
            print('Stopping: {} minibatches in a row had NaN or inf gradients (all dropped). '
                  'Lower --lr and resume from the last checkpoint.'.format(self.streak),
                  file=sys.stderr, flush=True)
            loop.stop_requested = True


class HeldOutBound(Extension):
    """Adds the bound K on (part of) the held-out set to the log, with its standard error.

    The same examples and noise every time, so successive values are comparable.
    """

    def __init__(self, experiment, every_n_batches, before_training=False):
        super().__init__(every_n_batches=every_n_batches, before_training=before_training)
        self.exp = experiment
        self.x = experiment.test_x[:experiment.n_monitor]
        self.fn = None

    def __call__(self, loop, event):
        if self.fn is None:
            self.fn = self.exp.compile_bound()
        r = self.exp.heldout_bound(self.fn, self.x, seed=1)
        if not loop.log:  # before a fresh run's first minibatch: a record of its own
            loop.log.append({'iteration': 0, 'epoch': 0})
        loop.record.update({'heldout_K_bits': r['K_bits'], 'heldout_stderr_bits': r['stderr_bits'],
                            'heldout_K_minus_Lnull_bits': r['K_minus_Lnull_bits']})


class Plots(Extension):
    """Rewrites the figures that change during training in the run directory (the
    schedule b_t, the image read-out over t, the held-out bound so far) after each
    evaluation and at the end."""

    def __init__(self, experiment, run_dir, every_n_batches):
        super().__init__(every_n_batches=every_n_batches, after_training=True)
        self.exp, self.run_dir = experiment, run_dir
        self.compiled = {}  # functions compiled once, reused at every call

    def __call__(self, loop, event):
        import figures
        figures.training_figures(self.exp, loop.log, self.run_dir, self.compiled)


def final_evaluation(loop, exp, run_dir):
    """The bound on the held-out set (exp.final_examples of it, exp.final_draws
    stratified draws of t each), figures, and results.json."""
    import os
    import figures
    x = exp.test_x[:exp.final_examples]
    r = exp.heldout_bound(exp.compile_bound(), x, n_draws=exp.final_draws, seed=2)
    figures.experiment_figures(exp, run_dir, seed=loop.status['seed'])
    r.update(exp.reference_values())
    return write_results(os.path.join(run_dir, 'results.json'), loop, r)


class SamplePlots(Extension):
    """Samples from the model as it trains, with sampler.py's code: RUN_DIR/sample_*.png
    and, for images, inpainting of a centred square of held-out images, inpaint_*.png.

    Cheap by construction: n examples (16), 6 frames. The first call times one reverse
    step and skips the plots (saying so once) when T steps would take more than max_s
    seconds. Measured here for 16 examples (2-core EPYC, float32, a training run beside
    it): Swiss roll T = 40, 0.06 ms a step (a figure in well under a second); heartbeat
    T = 2000, 0.15 ms (0.3 s); 8x8 digits with the code's network, T = 1000, 18 ms (18 s,
    over the default budget, so skipped: raise max_s or use sampler.py on the checkpoint).
    """

    def __init__(self, experiment, run_dir, every_n_batches, n=16, max_s=10.0):
        super().__init__(every_n_batches=every_n_batches, after_training=True)
        self.exp, self.run_dir, self.n, self.max_s = experiment, run_dir, n, max_s
        self.kernel = None
        self.affordable = None

    def __call__(self, loop, event):
        import time
        import sampler
        if self.kernel is None:
            self.kernel = sampler.compile_reverse_kernel(self.exp.diffusion, self.exp.train_x.ndim)
            x = sampler.to_model_units(self.exp, sampler.originals(self.exp, self.n))
            self.kernel(x, np.full(len(x), 1, dtype='int64'))  # warm-up
            start = time.time()
            self.kernel(x, np.full(len(x), 1, dtype='int64'))
            total_s = (time.time() - start) * self.exp.diffusion.T_steps
            self.affordable = total_s <= self.max_s
            if not self.affordable:
                print('SamplePlots: skipped, {} reverse steps would take about {:.0f} s; use '
                      'sampler.py on the checkpoint instead'.format(self.exp.diffusion.T_steps, total_s),
                      file=sys.stderr, flush=True)
        if not self.affordable:
            return
        modes = ['sample'] + (['inpaint'] if sampler.is_image(self.exp) else [])
        for mode in modes:
            result = sampler.run(self.exp, mode, n=self.n, seed=loop.status['seed'], mask='centre',
                                 n_frames=6, kernel=self.kernel)
            sampler.save(result, self.exp, self.run_dir, mode, arrays=False)
