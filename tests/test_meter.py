"""Progress of long work (meter.py): a bar on a terminal; in a file or a pipe whole lines,
at most one per 30 s per task, with the time left. The commands are run with their output
to a pipe and a clock that advances 10 s at each reading, so that the lines come at once."""
import functools
import io
import itertools
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from tqdm import tqdm

import checkpoints
import datasets
import experiments
import meter
import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK_S = 10.0  # each reading of the injected clock advances it this much
# run a command with meter's clock replaced: argv[1] is the script, the rest its arguments
WITH_CLOCK = ('import functools, itertools, runpy, sys; sys.path.insert(0, {root!r}); import meter; '
              'ticks = itertools.count(0.0, {tick}); '
              'meter.bar = functools.partial(meter.bar, clock=lambda: next(ticks)); '
              'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")').format(
                  root=ROOT, tick=TICK_S)
LINE = re.compile(r'(?P<desc>[a-zA-Z ]+): (?P<n>\d+)/(?P<total>\d+) \w+ \(\d+%\), [0-9.e+-]+ \w+/s, '
                  r'(\d+ s|\d+ min|\d+ h \d\d min) left')


class Terminal(io.StringIO):
    def isatty(self):
        return True


def clock(step=TICK_S):
    ticks = itertools.count(0.0, step)
    return lambda: next(ticks)


def test_lines_come_at_most_every_30_s_with_the_rate_and_the_time_left():
    out = io.StringIO()
    progress = meter.bar(12, 'bound K', stream=out, clock=clock())  # t = 0 at the start, +10 s per update
    for _ in range(12):
        progress.update(1)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines == ['bound K: 3/12 batches (25%), 0.1 batches/s, 90 s left',
                     'bound K: 6/12 batches (50%), 0.1 batches/s, 60 s left',
                     'bound K: 9/12 batches (75%), 0.1 batches/s, 30 s left',
                     'bound K: 12/12 batches (100%), 0.1 batches/s, 0 s left']
    assert out.getvalue().endswith('\n') and '\r' not in out.getvalue()


def test_a_resumed_task_counts_its_rate_from_where_it_starts():
    out = io.StringIO()
    progress = meter.bar(100, 'bound K', initial=40, stream=out, clock=clock(15.0))
    progress.update(5)
    progress.update(5)  # 30 s after the start: 10 units, 1 every 3 s, 50 left
    assert out.getvalue() == 'bound K: 50/100 batches (50%), 0.333 batches/s, 2 min left\n'


def test_work_of_unknown_size_gives_the_count_and_the_rate():
    out = io.StringIO()
    with meter.bar(None, 'MNIST', unit='bytes', stream=out, clock=clock(30.0)) as progress:
        progress.update(600)
    assert out.getvalue() == 'MNIST: 600 bytes, 20 bytes/s\n'


def test_a_bar_on_a_terminal_lines_elsewhere_nothing_when_disabled():
    assert isinstance(meter.bar(3, 'x', stream=Terminal()), tqdm)
    assert isinstance(meter.bar(3, 'x', stream=io.StringIO()), meter.Lines)
    out = io.StringIO()
    for _ in meter.track(range(50), 'x', enabled=False, stream=out):
        pass
    assert out.getvalue() == ''


def test_track_gives_every_item_and_counts_each_once_done():
    out = io.StringIO()
    items = list(meter.track(['a', 'b', 'c', 'd'], 'letters', unit='letters', stream=out, clock=clock(30.0)))
    assert items == ['a', 'b', 'c', 'd']
    assert [line.split(' (')[0] for line in out.getvalue().splitlines()] == [
        'letters: {}/4 letters'.format(i) for i in range(1, 5)]


def test_waiting_says_still_working_until_the_block_ends():
    out, seen = io.StringIO(), threading.Event()

    class Stream(io.StringIO):
        def write(self, text):
            out.write(text)
            seen.set()
            return len(text)

    with meter.waiting('compiling the bound', Stream(), every_s=0.01):
        assert seen.wait(60)  # the block lasts until a line came
    after = out.getvalue()
    assert after.startswith('  still compiling the bound (') and after.endswith(')\n')
    assert all(line.startswith('  still compiling the bound (') for line in after.splitlines())
    quiet = io.StringIO()
    with meter.waiting('compiling', quiet, every_s=0.0, enabled=False):
        pass
    assert quiet.getvalue() == ''


def test_generating_dead_leaves_to_a_file_gives_whole_sparse_lines(monkeypatch, capsys):
    monkeypatch.setattr(meter, 'bar', functools.partial(meter.bar, clock=clock()))  # stderr: capsys's
    datasets.deadleaves(1000, size=8)
    err = capsys.readouterr().err
    assert '\r' not in err and err.endswith('\n')
    counts = [int(LINE.fullmatch(line)['n']) for line in err.splitlines()]
    assert counts == list(range(3, 1001, 3))  # one line per 30 s of the clock



def test_the_exact_log_likelihood_of_the_roll_says_its_progress(monkeypatch, capsys):
    monkeypatch.setattr(meter, 'bar', functools.partial(meter.bar, clock=clock()))
    datasets.swissroll_log_density(np.zeros((640, 2)), noise=0.5)  # a coarse grid: fast
    err = capsys.readouterr().err
    assert [int(LINE.fullmatch(line)['n']) for line in err.splitlines()] == [192, 384, 576]  # 64 points a step


def run_piped(script, *args):
    """The command's stdout and stderr, together, through a pipe, with the injected clock."""
    r = subprocess.run([sys.executable, '-c', WITH_CLOCK, os.path.join(ROOT, script)] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert r.returncode == 0, r.stdout
    return r.stdout


def progress_lines(output, desc):
    assert '\r' not in output and output.endswith('\n')  # whole lines, no bar
    matches = [LINE.fullmatch(line) for line in output.splitlines() if line.startswith(desc + ':')]
    assert matches and all(matches), output
    counts = [int(m['n']) for m in matches]
    assert all(b - a >= 30 / TICK_S for a, b in zip(counts, counts[1:]))  # at most one line per 30 s
    return counts


@pytest.mark.slow  # runs a command in a subprocess
def test_evaluate_to_a_pipe_prints_whole_sparse_lines_of_the_bound(tmp_path):
    exp = experiments.build('heartbeat', presets.model_args('heartbeat', 'paper', dict(
        T=10, n_hidden=8, n_layers=1, n_basis=5, n_train=500, n_eval=200)), seed=0)
    args = {'dataset': 'heartbeat', 'fidelity': 'paper', 'model_args': {}, 'seed': 0, 'data_path': None}
    checkpoints.save_checkpoint(str(tmp_path / 'checkpoint.npz'), {
        'shared': {p.name: p.get_value() for p in exp.params}, 'status': {'iterations_done': 0},
        'config': {'args': args, 'model': exp.args}})
    output = run_piped('evaluate.py', str(tmp_path), '--n-t', '4', '--n-examples', '40', '--batch-size', '10')
    assert progress_lines(output, 'bound K') == [3, 6, 9, 12, 15]  # 4 draws of 4 minibatches, a line per 3
    assert re.search(r'^K = ', output, re.M)


@pytest.mark.slow  # runs a command in a subprocess
def test_sampler_to_a_pipe_prints_whole_sparse_lines_of_the_reverse_steps(tmp_path):
    exp = experiments.build('swissroll', presets.model_args('swissroll', 'paper', dict(T=12, n_train=500, n_eval=200)),
                            seed=0)
    args = {'dataset': 'swissroll', 'fidelity': 'paper', 'model_args': {}, 'seed': 0, 'data_path': None}
    checkpoints.save_checkpoint(str(tmp_path / 'checkpoint.npz'), {
        'shared': {p.name: p.get_value() for p in exp.params}, 'status': {'iterations_done': 0},
        'config': {'args': args, 'model': exp.args}})
    output = run_piped('sampler.py', str(tmp_path / 'checkpoint.npz'), '--n', '20', '--output-dir', str(tmp_path))
    counts = progress_lines(output, 'reverse steps')
    assert counts == list(range(3, 13, 3))
    assert np.load(str(tmp_path / 'sample.npz'))['samples'].shape == (20, 2)
