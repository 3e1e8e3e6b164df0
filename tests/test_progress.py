"""Training progress: the compile time, the rate and the time left on every progress line,
a line at least every 30 s, and RUN_DIR/progress.csv (appended to on resume)."""
import csv
import glob
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import extensions as E
import mainloop
import meter
import streams

pytestmark = pytest.mark.slow  # trains a digits network (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# digits with a tiny network: a run of 20 minibatches takes seconds once compiled
TINY = ['--dataset', 'digits', '--seed', '3', '--ext-every-n', '10', '--batch-size', '50',
        '--model-args', 'T=20,n_temporal_basis=3,n_hidden_dense_lower=16,n_hidden_dense_lower_output=2,'
        'n_hidden_dense_upper=8,n_hidden_conv=6,n_layers_conv=2,n_layers_dense_lower=2,n_layers_dense_upper=2']


def train_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + list(args),
                          capture_output=True, text=True, timeout=900)


def progress_rows(run_dir):
    with open(os.path.join(run_dir, 'progress.csv'), newline='') as f:
        return list(csv.DictReader(f))


def test_a_run_says_its_compile_time_rate_and_time_left_and_writes_progress_csv(tmp_path):
    r = train_cli(*TINY, '--max-batches', '20', '--output-dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith('Compiling the training function'))
    waiting = [line for line in lines[i + 1:] if line.startswith('  still compiling')]  # every 30 s of it
    assert all(re.fullmatch(r'  still compiling the (training function|held-out bound) \((\d+ s|\d+ min \d\d s|\d+ h \d\d min \d\d s)\)', line)
               for line in waiting)
    compiled = next(line for line in lines[i + 1:] if not line.startswith('  still'))
    assert re.fullmatch(r'Compiled in \d+\.\d s\.', compiled), compiled
    progress = [line for line in lines if line.startswith('iter ')]
    assert {'iter 10', 'iter 20'} <= {line.split(' |')[0] for line in progress}
    for line in progress:
        assert re.search(r' \| [0-9.e+]+ minibatches/s \| \d+ (s|min) left \(--max-batches\) \| ', line), line
    assert '\r' not in r.stdout + r.stderr  # a file or a pipe gets whole lines, no progress bars
    run_dir, = glob.glob(str(tmp_path / 'diffusion_digits_*'))
    rows = progress_rows(run_dir)
    assert [int(row['iteration']) for row in rows] == [int(line.split()[1]) for line in progress]
    ten = next(row for row in rows if row['iteration'] == '10')
    assert np.isfinite(float(ten['heldout_K_bits'])) and np.isfinite(float(ten['cost_bits_per_dim']))
    assert float(ten['lr']) > 0 and float(ten['minibatches_per_s']) > 0 and float(ten['wall_s']) > 0
    assert all(row['heldout_K_bits'] == '' for row in rows if int(row['iteration']) % 10)

    r = train_cli('--resume', run_dir, '--max-batches', '30')
    assert r.returncode == 0, r.stderr
    rows = progress_rows(run_dir)
    assert [int(row['iteration']) for row in rows][-1] == 30 and int(rows[0]['iteration']) <= 10
    iterations = [int(row['iteration']) for row in rows]
    assert iterations == sorted(set(iterations))  # appended, no row twice
    assert open(os.path.join(run_dir, 'progress.csv')).read().count('iteration,') == 1  # one header


def test_a_resumed_run_cuts_progress_csv_back_to_its_checkpoint(tmp_path):
    path = str(tmp_path / 'progress.csv')
    for i in (10, 20, 30):
        E.append_csv(path, E.Printing.CSV_FIELDS, {'iteration': i, 'wall_s': i / 10})
    E.cut_csv(path, 20)
    assert [row['iteration'] for row in csv.DictReader(open(path))] == ['10', '20']
    E.append_csv(path, E.Printing.CSV_FIELDS, {'iteration': 30})
    assert open(path).read().count('iteration,') == 1


def test_the_time_left_is_to_the_limit_that_ends_the_run_first():
    status = {'iterations_done': 100, 'epochs_done': 1, 'batch_in_epoch': 20, 'wall_s': 50.0}
    assert E.FinishAfter(max_batches=300).time_left(status, 2.0) == (100.0, '--max-batches')
    assert E.FinishAfter(max_epochs=2, batches_per_epoch=80).time_left(status, 2.0) == (30.0, '--max-epochs')
    assert E.FinishAfter(300, 2, 60.0, 80).time_left(status, 2.0) == (10.0, '--max-minutes')
    assert E.FinishAfter(max_seconds=30.0).time_left(status, 2.0) == (0.0, '--max-minutes')
    assert E.FinishAfter().time_left(status, 2.0) is None
    assert [meter.duration(s) for s in (45, 720, 3 * 3600 + 300)] == ['45 s', '12 min', '3 h 05 min']


def test_waiting_lines_every_30_s_never_repeat_a_figure():
    beats = [meter.elapsed(30 * k + 0.4) for k in range(1, 130)]  # 30 s to 64.5 min
    assert len(set(beats)) == len(beats)
    assert beats[:4] == ['30 s', '60 s', '90 s', '2 min 00 s'] and meter.elapsed(3930) == '1 h 05 min 30 s'


def quiet_loop(printing):
    """A main loop of 25 minibatches of a step that takes no time to compile."""
    data = np.zeros((100, 2), 'float32')
    stream = streams.DataStream(streams.ArrayDataset(features=data), streams.ShuffledScheme(100, 4, 0))
    step = lambda batch, rng: {'cost_bits_per_dim': 1.0}  # noqa: E731
    finish = E.FinishAfter(max_batches=25)
    printing.finish = finish
    return mainloop.MainLoop(step, stream, {}, [finish, printing], 0)


@pytest.mark.parametrize('quiet_s, expected', [(3600.0, ['iter 10', 'iter 20', 'iter 25']),
                                               (0.0, ['iter {}'.format(i) for i in range(1, 26)])])
def test_a_progress_line_comes_at_least_every_quiet_s_seconds(tmp_path, quiet_s, expected):
    """Every N minibatches, at the end, and between them whenever quiet_s seconds of wall
    time passed without a line (30 s in a run; 0 here: after every minibatch)."""
    out = io.StringIO()
    printing = E.Printing(10, csv_path=str(tmp_path / 'progress.csv'), quiet_s=quiet_s, stream=out)
    quiet_loop(printing).run()
    lines = out.getvalue().splitlines()
    assert [line.split(' |')[0] for line in lines] == expected
    assert all('left (--max-batches)' in line for line in lines[:-1])
    assert len(progress_rows(str(tmp_path))) == len(lines)
