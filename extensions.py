"""What runs around the training steps: printing, the JSON-lines log, checkpoints,
stopping, the learning-rate schedule, evaluation and plots.

Each extension says when it is due (every N batches or epochs, before or after
training, on an interrupt) and is called with the main loop.
"""
import csv
import math
import os
import sys
import time

import numpy as np

import bound
import checkpoints
import figures
import meter
import parallel
import reverse
import rundirs
import steprules


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
    """Stop after a number of minibatches, epochs or seconds, counted from the run's start.
    batches_per_epoch: for time_left with max_epochs."""

    def __init__(self, max_batches=None, max_epochs=None, max_seconds=None, batches_per_epoch=None):
        super().__init__(every_n_batches=1, every_n_epochs=1, before_training=True)
        self.max_batches, self.max_epochs, self.max_seconds = max_batches, max_epochs, max_seconds
        self.batches_per_epoch = batches_per_epoch

    def time_left(self, status, rate):
        """(seconds, flag) to the limit that ends the run first, at `rate` minibatches per
        second of training time; None without a limit."""
        left = []
        if rate and self.max_batches is not None:
            left.append(((self.max_batches - status['iterations_done']) / rate, '--max-batches'))
        if rate and self.max_epochs is not None and self.batches_per_epoch:
            batches = (self.max_epochs - status['epochs_done']) * self.batches_per_epoch - status['batch_in_epoch']
            left.append((batches / rate, '--max-epochs'))
        if self.max_seconds is not None:
            left.append((self.max_seconds - status['wall_s'], '--max-minutes'))
        return min(((max(seconds, 0.0), flag) for seconds, flag in left), default=None)

    def __call__(self, loop, event):
        s = loop.status
        if ((self.max_batches is not None and s['iterations_done'] >= self.max_batches)
                or (self.max_epochs is not None and s['epochs_done'] >= self.max_epochs)
                or (self.max_seconds is not None and s['wall_s'] >= self.max_seconds)):
            loop.stop_requested = True


# The released code's decay (docs/paper_and_code.md, section 3, item 7): x exp(ln 0.1 / 1000)
# every 500 minibatches, down to 1e-4.
RELEASED_SCHEDULE = {'every_n_batches': 500, 'factor': math.exp(math.log(0.1) / 1000), 'floor': 1e-4}


def exponential_decay(lr_start, lr_final, n_batches, every_n_batches=100):
    """The schedule (every_n_batches, factor, floor) that decays the learning rate
    exponentially from lr_start to lr_final over n_batches minibatches and then holds it
    at lr_final (our choice for the toy sets)."""
    factor = (lr_final / lr_start) ** (every_n_batches / n_batches)
    return {'every_n_batches': every_n_batches, 'factor': factor, 'floor': lr_final}


class LearningRateSchedule(Extension):
    """Multiplies the learning rate by `factor` every `every_n_batches` minibatches, never
    below `floor` (RELEASED_SCHEDULE or exponential_decay). The learning rate itself is in
    the checkpoint, so a resumed run continues the same sequence."""

    def __init__(self, lr, every_n_batches, factor, floor):
        super().__init__(every_n_batches=every_n_batches)
        self.lr, self.factor, self.floor = lr, factor, floor

    def __call__(self, loop, event):
        new = max(float(self.lr.get_value()) * self.factor, self.floor)
        self.lr.set_value(np.asarray(new, dtype=self.lr.dtype))


class JSONLog(Extension):
    """Appends every minibatch's record to RUN_DIR/log.jsonl, one JSON object per line,
    and keeps status['log_bytes'], the file's length, which every checkpoint stores.

    Before training the file is cut to status['log_bytes'] (0 for a new run), so after a
    resume it holds exactly the records up to the checkpoint, then the new ones.
    """

    def __init__(self, path):
        super().__init__(every_n_batches=1, before_training=True)
        self.path = path

    def __call__(self, loop, event):
        if event == 'before_training':
            self.cut(loop.status)
        if loop.record:
            with rundirs.naming(self.path), open(self.path, 'a') as f:
                f.write(rundirs.to_json(loop.record) + '\n')
                loop.status['log_bytes'] = f.tell()

    def cut(self, status):
        """Truncate the log to the checkpoint's length; ValueError if it is shorter."""
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        keep = status['log_bytes']
        if keep is None:  # a converted old checkpoint that had no log.jsonl beside it
            keep = checkpoints.log_offset(self.path, status['iterations_done']) if size else 0
        if size < keep:
            raise ValueError('{} has {} bytes, the checkpoint expects at least {}; the log is '
                             'incomplete'.format(self.path, size, keep))
        with open(self.path, 'a') as f:
            f.truncate(keep)
        status['log_bytes'] = keep


class Printing(Extension):
    """A progress line every N minibatches, and whenever `quiet_s` seconds of wall time
    passed without one: iteration, epoch, training time, the rate since the last line
    (minibatches per second of training time, evaluations included), the time left to the
    limit that ends the run first (FinishAfter.time_left) and the mean of each monitored
    value over the minibatches since the last line. With csv_path, each line is also a row
    of that CSV file (progress.csv): iteration, epoch, wall_s, minibatches_per_s,
    cost_bits_per_dim, heldout_K_bits (where the monitor ran) and lr. On resume the file
    is cut back to the checkpoint's minibatch, as log.jsonl is, and appended to."""

    CSV_FIELDS = ('iteration', 'epoch', 'wall_s', 'minibatches_per_s', 'cost_bits_per_dim', 'heldout_K_bits', 'lr')

    def __init__(self, every_n_batches, finish=None, csv_path=None, lr=None, quiet_s=30.0, stream=None):
        super().__init__(every_n_batches=every_n_batches, before_training=True, after_training=True)
        self.every_n, self.finish, self.csv_path, self.lr, self.quiet_s = (
            every_n_batches, finish, csv_path, lr, quiet_s)
        self.stream = stream
        self.sums, self.counts = {}, {}
        self.last = None  # (iteration, training time, wall clock) of the last line

    def due(self, event, status):
        return event == 'batch' or super().due(event, status)

    def __call__(self, loop, event):
        s = loop.status
        if event == 'before_training':
            self.last = (s['iterations_done'], s['wall_s'], time.time())
            if self.csv_path:
                cut_csv(self.csv_path, s['iterations_done'])
            return
        if event == 'batch':
            for k, v in loop.record.items():
                if k not in ('iteration', 'epoch', 'wall_s') and isinstance(v, (int, float)):
                    self.sums[k] = self.sums.get(k, 0.0) + v
                    self.counts[k] = self.counts.get(k, 0) + 1
            if s['iterations_done'] % self.every_n and time.time() - self.last[2] < self.quiet_s:
                return
        if self.counts:
            self.line(loop)

    def line(self, loop):
        """Print the line (and write the row) of the minibatches since the last one."""
        s = loop.status
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        seconds = s['wall_s'] - self.last[1]
        rate = (s['iterations_done'] - self.last[0]) / seconds if seconds > 0 else None
        parts = ['iter {:d}'.format(s['iterations_done']), 'epoch {:d}'.format(s['epochs_done']),
                 '{:.0f}s'.format(s['wall_s'])]
        if rate:
            parts.append('{:.3g} minibatches/s'.format(rate))
        left = self.finish.time_left(s, rate) if self.finish else None
        if left:
            parts.append('{} left ({})'.format(meter.duration(left[0]), left[1]))
        parts += ['{} {:.4g}'.format(k, v) for k, v in means.items()]
        print(' | '.join(parts), file=self.stream or sys.stdout, flush=True)
        if self.csv_path:
            lr = float(self.lr.get_value()) if self.lr is not None else None
            append_csv(self.csv_path, self.CSV_FIELDS, {
                'iteration': s['iterations_done'], 'epoch': s['epochs_done'], 'wall_s': round(s['wall_s'], 3),
                'minibatches_per_s': number(rate), 'cost_bits_per_dim': number(means.get('cost_bits_per_dim')),
                'heldout_K_bits': number(loop.record.get('heldout_K_bits')), 'lr': number(lr)})
        self.sums, self.counts = {}, {}
        self.last = (s['iterations_done'], s['wall_s'], time.time())


def number(value):
    """A CSV cell: 6 significant digits, empty for None."""
    return '' if value is None else '{:.6g}'.format(value)


def append_csv(path, fields, row):
    """Append `row` (a dict) to the CSV file `path`, writing the header first when the file
    is new or empty."""
    with rundirs.naming(path), open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fields)
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow(row)


def cut_csv(path, iteration):
    """Keep the header and the rows of the CSV file `path` up to `iteration` (a resumed
    run's file then goes on from its checkpoint)."""
    if not os.path.exists(path):
        return
    with rundirs.naming(path), open(path, newline='') as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        kept = [r for r in rows if int(r['iteration']) <= iteration]
    if len(kept) == len(rows):
        return
    with rundirs.naming(path), open(path + '.tmp', 'w', newline='') as f:  # then renamed: a kill keeps the old file
        writer = csv.DictWriter(f, reader.fieldnames)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(path + '.tmp', path)


class Checkpoint(Extension):
    """Writes the loop's state to `path` (atomically), periodically and at the end, and to
    `best_path` too whenever the held-out monitor has just given its highest K so far (the
    run's best parameters, for a network that starts to overfit a small training set).

    On Ctrl-C or SIGTERM it writes one and says how to resume. Parameters that are NaN or
    inf are never written: the last finite checkpoint stays (NonFiniteGuard stops the run).
    """

    def __init__(self, path, every_n_batches=None, resume_hint=None, best_path=None):
        super().__init__(every_n_batches=every_n_batches, after_training=True, on_interrupt=True)
        self.path, self.best_path = path, best_path
        self.resume_hint = resume_hint or 'python train.py --resume ' + path

    def __call__(self, loop, event):
        state = loop.state_dict()
        if not checkpoints.finite(state['shared'].values()):
            return
        checkpoints.save_checkpoint(self.path, state)
        evaluations = loop.status['evaluations']
        bounds = [e['heldout_K_bits'] for e in evaluations  # a NaN bound (null once stored) is never the best
                  if isinstance(e['heldout_K_bits'], float) and math.isfinite(e['heldout_K_bits'])]
        if (self.best_path and evaluations and evaluations[-1]['iteration'] == loop.status['iterations_done']
                and evaluations[-1]['heldout_K_bits'] in bounds and evaluations[-1]['heldout_K_bits'] >= max(bounds)):
            checkpoints.save_checkpoint(self.best_path, state)
        if event == 'interrupt':
            print('Checkpoint written to {} after {} minibatches. Resume with:\n  {}'.format(
                self.path, loop.status['iterations_done'], self.resume_hint), file=sys.stderr, flush=True)


class NonFiniteGuard(Extension):
    """Stops training when it has gone non-finite, and says why in loop.nonfinite: at once
    when the parameters have become NaN or inf (a step that overflowed), or when `patience`
    minibatches in a row had a NaN or inf cost or gradient (each such step is dropped, or the
    affected parameters' gradients zeroed, by the step rule; this stops instead of spinning). Every process decides the same."""

    def __init__(self, patience=100):
        super().__init__(every_n_batches=1)
        self.patience = patience
        self.streak = 0
        self.last = None

    def __call__(self, loop, event):
        count = loop.record.get('n_nonfinite', 0)
        cost_finite = all(math.isfinite(v) for v in loop.record.values() if isinstance(v, float))
        dropped = self.last is not None and count > self.last
        self.streak = self.streak + 1 if dropped or not cost_finite else 0
        self.last = count
        i = loop.status['iterations_done']
        if not cost_finite and not checkpoints.finite(v.get_value() for v in loop.shared.values()):
            loop.nonfinite = 'the parameters became NaN or inf at minibatch {}'.format(i)
        elif self.streak >= self.patience:
            loop.nonfinite = '{} minibatches in a row, up to minibatch {}, had a NaN or inf cost or gradient'.format(
                self.streak, i)
        if loop.nonfinite:
            loop.stop_requested = True


MONITOR_SEED = 1  # the monitor's draws at iteration i come from seed MONITOR_SEED + i


class HeldOutBound(Extension):
    """Adds the bound K on (part of) the held-out set to the log, with its standard error,
    and keeps each evaluation in status['evaluations'] (the K curve, which the checkpoint
    carries across resumes).

    The same examples every time, with fresh steps and noise at each evaluation (drawn
    from the iteration), so that the points of the K curve have independent sampling
    errors; what they share is the choice of examples. With an average of the parameters
    (steprules.ParameterAverage) the bound is the average's. With several processes (comm)
    they share the work, after checking that they all hold the same parameters.
    """

    def __init__(self, experiment, every_n_batches, before_training=False, comm=None, average=None):
        super().__init__(every_n_batches=every_n_batches, before_training=before_training)
        self.exp, self.comm, self.average = experiment, comm or parallel.SingleProcess(), average
        self.x = experiment.test_x[:experiment.n_monitor]
        self.fn = None

    def __call__(self, loop, event):
        if self.fn is None:
            start = time.time()
            if self.comm.is_writer:
                print('Compiling the held-out bound ...', flush=True)
            with meter.waiting('compiling the held-out bound', enabled=self.comm.is_writer):
                self.fn = bound.compile_terms(self.exp)
            if self.comm.is_writer:
                print('Compiled in {:.1f} s.'.format(time.time() - start), flush=True)
        if not self.comm.same_everywhere(self.exp.params_checksum()):
            raise RuntimeError('after {} minibatches the processes hold different parameters; stopping '
                               '(the last checkpoint is good)'.format(loop.status['iterations_done']))
        with steprules.averaged(self.average):
            r = bound.heldout_bound(self.exp, self.x, n_t=self.exp.monitor_draws, fn=self.fn, comm=self.comm,
                                    seed=MONITOR_SEED + loop.status['iterations_done'],
                                    progress=self.comm.is_writer)
        s = loop.status
        if event == 'before_training':  # a record of its own, before the next minibatch
            loop.record = {'iteration': s['iterations_done'], 'epoch': s['epochs_done']}
        loop.record.update({'heldout_K_bits': r['K_bits'], 'heldout_stderr_bits': r['stderr_bits'],
                            'heldout_K_minus_Lnull_bits': r['K_minus_Lnull_bits'], 'wall_s': s['wall_s']})
        s['evaluations'].append(checkpoints.evaluation_record(loop.record))


class Plots(Extension):
    """Rewrites the figures that change during training in the run directory (the
    schedule b_t, the image read-out over t, the held-out bound so far) after each
    evaluation and at the end."""

    def __init__(self, experiment, run_dir, every_n_batches, average=None):
        super().__init__(every_n_batches=every_n_batches, after_training=True)
        self.exp, self.run_dir, self.average = experiment, run_dir, average
        self.compiled = {}  # functions compiled once, reused at every call

    def __call__(self, loop, event):
        with steprules.averaged(self.average):
            figures.training_figures(self.exp, loop.status['evaluations'], self.run_dir, self.compiled)


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

    def __init__(self, experiment, run_dir, every_n_batches, n=16, max_s=10.0, average=None):
        super().__init__(every_n_batches=every_n_batches, after_training=True)
        self.exp, self.run_dir, self.n, self.max_s, self.average = experiment, run_dir, n, max_s, average
        self.kernel = None
        self.affordable = None

    def __call__(self, loop, event):
        with steprules.averaged(self.average):
            self.plot(loop)

    def plot(self, loop):
        if self.kernel is None:
            self.kernel = reverse.compile_reverse_kernel(self.exp.diffusion, self.exp.train_x.ndim)
            x = reverse.to_model_units(self.exp, reverse.originals(self.exp, self.n))
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
        modes = ['sample'] + (['inpaint'] if self.exp.pixels else [])
        for mode in modes:
            result = reverse.run(self.exp, mode, n=self.n, seed=loop.status['seed'], mask='centre',
                                 n_frames=6, kernel=self.kernel)
            figures.save_samples(result, self.exp, self.run_dir, mode, arrays=False)
