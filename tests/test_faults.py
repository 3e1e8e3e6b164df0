"""Faults and absurd values end in one line and lose nothing: sizes too large for the
machine, a run directory that becomes read-only or full, signals while compiling or during
the processes' reduction, two writers of one run directory, runs that go non-finite,
malformed checkpoints and resume edge cases, seeds outside numpy's range, evaluate.py's
partial file."""
import errno
import glob
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import theano
from conftest import TINY_HEARTBEAT as TINY

import bound
import checkpoints
import estimators
import evaluate
import experiments
import extensions as E
import mainloop
import memory
import parallel
import rundirs
import sampler
import settings
import streams
import train

pytestmark = pytest.mark.slow  # runs train.py, evaluate.py and sampler.py in subprocesses (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'train.py')


def train_cli(*args, timeout=600):
    return subprocess.run([sys.executable, TRAIN] + list(args), capture_output=True, text=True, timeout=timeout)


def one_line(text):
    """The single line of `text` (stderr of a failure); fails when there are more or none."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in text, text
    return lines[0]


def ending(text):
    """The last line of a script's stderr (other lines may say what the run skipped, for
    example); fails on a traceback."""
    assert 'Traceback' not in text, text
    return text.strip().splitlines()[-1]


def error(text):
    """The message of a one-line error of a script run in this process (its name there is
    pytest's)."""
    return one_line(text).split(': error: ', 1)[1]


def strict_json_lines(path):
    """Every line of a JSON-lines file parsed as strict JSON (NaN and Infinity refused)."""
    def refuse(constant):
        raise ValueError('{} in {}'.format(constant, path))
    return [json.loads(line, parse_constant=refuse) for line in open(path)]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """A tiny heartbeat run of 300 minibatches (checkpoints at 100, 200, 300); tests copy it."""
    out = tmp_path_factory.mktemp('finished')
    r = train_cli(*TINY, '--max-batches', '300', '--output-dir', str(out))
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(out / 'diffusion_heartbeat_*'))
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run directory, and its checkpoint."""
    run_dir = str(tmp_path / 'run')
    shutil.copytree(finished_run, run_dir)
    return run_dir, os.path.join(run_dir, 'checkpoint.npz')


# ---------------------------------------------------------------- sizes too large for this machine

@pytest.mark.parametrize('model_args', ['T=1000000000000', 'n_hidden=1000000000', 'n_train=100000000000',
                                        'n_basis=100000000'])
def test_a_model_argument_too_large_for_the_memory_is_one_line_naming_it(tmp_path, capsys, model_args):
    out = tmp_path / 'runs'
    with pytest.raises(SystemExit) as stop:
        train.main(['--dataset', 'heartbeat', '--max-batches', '5', '--model-args', model_args,
                    '--output-dir', str(out)])
    assert stop.value.code == 2
    line = error(capsys.readouterr().err)
    assert line.startswith('--model-args {} needs at least '.format(model_args)), line
    assert 'this machine has' in line and not out.exists()


@pytest.mark.parametrize('flag', ['--max-batches', '--max-epochs'])
def test_a_run_that_would_take_years_is_one_line_naming_the_flag_before_anything_is_made(tmp_path, capsys, flag):
    out = tmp_path / 'runs'
    with pytest.raises(SystemExit) as stop:
        train.main(['--dataset', 'heartbeat', flag, '1000000000000', '--output-dir', str(out)])
    assert stop.value.code == 2
    line = error(capsys.readouterr().err)
    assert line.startswith('{} 1000000000000: about '.format(flag)) and line.endswith(' years of training (0.0068 s '
                           'per minibatch of 512 measured for heartbeat on one process, scaled to 512); make it smaller')
    assert not out.exists()


def test_a_long_run_says_how_long_before_it_starts():
    s = dict(settings.DEFAULTS, batch_size=256, max_batches=300000, max_epochs=None, max_minutes=None)
    config = {'n_train': 100000}
    assert memory.check_training_time('heartbeat', s, config) == (None, (
        '--max-batches 300000: about 17 min of training (0.0068 s per minibatch of 512 measured for heartbeat on '
        'one process, scaled to 256)'))
    assert memory.check_training_time('heartbeat', s, config, iterations_done=250000) == (None, None)  # resumed
    assert memory.check_training_time('heartbeat', dict(s, max_minutes=5), config) == (None, None)
    assert memory.check_training_time('heartbeat', dict(s, max_batches=None, max_epochs=1000), config)[1].startswith(
        '--max-epochs 1000: about 22 min of training')  # 391 minibatches per epoch
    resumed = dict(s, max_batches=10 ** 7, max_minutes=425)  # --max-minutes counts the run's whole training
    assert memory.check_training_time('heartbeat', resumed, config, 20000, seconds_done=284 * 60)[1].startswith(
        '--max-minutes 425: about 2.4 h of training (the time left of the limit')  # not a speed: the network may be wider


def test_long_sampling_and_evaluation_say_how_long(capsys):
    exp = types.SimpleNamespace(dataset='heartbeat', diffusion=types.SimpleNamespace(T_steps=1000), args={},
                                test_x=np.zeros((10, 20), np.float32))
    args = sampler.build_parser().parse_args(['run', '--n', '200000'])
    assert sampler.check_sizes(args, exp, False) == (
        '--n 200000: about 15 min of sampling (200,000,000 reverse steps of the network, a third of a training '
        'step\'s time per example each)')
    with pytest.raises(SystemExit):
        sampler.check_sizes(sampler.build_parser().parse_args(['run', '--n', '10000000000000']), exp, False)
    assert error(capsys.readouterr().err).startswith('--n 10000000000000 needs at least ')  # memory before time
    refusal, notice = memory.check_evaluation_time(exp, 1000, 10, (1, 4000), 1000, 0)
    assert refusal is None and notice.startswith('--iw-n 1000 --iw-k 1,4000: about 4.9 h of evaluation')
    images = types.SimpleNamespace(dataset='deadleaves', diffusion=types.SimpleNamespace(T_steps=1000),
                                   args={'crop': 32}, test_x=np.zeros((1000, 1, 64, 64), np.uint8))
    assert memory.check_evaluation_time(images, 1000, 1000, (), 100, 0)[1].startswith(
        '--n-t 1000: about 89 min of evaluation')  # whole 64x64 images: 4 times a 32x32 training crop's work


def test_an_evaluation_too_large_for_the_memory_is_one_line_naming_the_flag(finished_run, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate.main([finished_run, '--n-t', '1000000000000'])
    assert stop.value.code == 2
    assert error(capsys.readouterr().err).startswith('--n-t 1000000000000 needs at least ')


# ---------------------------------------------------------------- the run directory fails

# train.py with writes into OUT failing (errno from the file FLAG) once FLAG exists: the
# stand-in for a read-only or full file system where this process cannot mount one.
FAULTY_WRITES = """
import builtins, os, runpy, sys
sys.path.insert(0, {root!r})
real_open = builtins.open
def faulty_open(file, mode='r', *args, **kw):
    if (isinstance(file, str) and set(mode) & set('wax+') and os.path.abspath(file).startswith({out!r})
            and os.path.exists({flag!r})):
        code = int(real_open({flag!r}).read())
        raise OSError(code, os.strerror(code), file)
    return real_open(file, mode, *args, **kw)
builtins.open = faulty_open
sys.argv = [{train!r}] + {args!r}
runpy.run_path({train!r}, run_name='__main__')
"""


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MB tmpfs at tmp_path/'mnt', or None where this process may not mount one."""
    point = tmp_path / 'mnt'
    point.mkdir()
    mounted = bool(shutil.which('mount')) and subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(point)], capture_output=True).returncode == 0
    yield point if mounted else None
    if mounted:
        subprocess.run(['umount', '-l', str(point)], capture_output=True)


def remount(point, mode):
    """Remount `point` read-only ('ro') or writable ('rw'); busy while a file there is open
    for writing (a log record, a figure), so tried again for a few seconds."""
    for _ in range(100):
        if subprocess.run(['mount', '-o', 'remount,' + mode, point], capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError('cannot remount {} {}'.format(point, mode))


def fill(folder):
    """Write a file into `folder` until its file system is full."""
    with open(os.path.join(folder, 'filler'), 'wb', buffering=0) as f:
        for size in (1 << 20, 4096, 512):
            try:
                while True:
                    f.write(b'\0' * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC


@pytest.mark.parametrize('fault', ['read-only', 'full'])
def test_a_run_directory_that_fails_ends_in_one_line_and_keeps_the_checkpoint(tmp_path, small_tmpfs, fault):
    """The output file system becomes read-only, or full, during training: one line names the
    file and what was kept; the printed command resumes once the disk is writable again."""
    out = str(small_tmpfs or tmp_path / 'out')
    flag = str(tmp_path / 'fault')
    args = TINY + ['--max-batches', '100000', '--ext-every-n', '50', '--output-dir', out]
    cmd = ([sys.executable, TRAIN] + args if small_tmpfs else
           [sys.executable, '-c', FAULTY_WRITES.format(root=ROOT, out=out, flag=flag, train=TRAIN, args=args)])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the checkpoint of minibatch 100 is written before this line
            if line.startswith('iter 150'):
                break
        if small_tmpfs and fault == 'read-only':
            remount(out, 'ro')
        elif small_tmpfs:
            fill(out)
        else:
            open(flag, 'w').write(str(errno.EROFS if fault == 'read-only' else errno.ENOSPC))
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    run_dir, = glob.glob(os.path.join(out, 'diffusion_heartbeat_*'))
    ckpt = os.path.join(run_dir, 'checkpoint.npz')
    reason = 'Read-only file system' if fault == 'read-only' else 'No space left on device'
    assert proc.returncode == 2, err
    line = ending(err)
    match = re.fullmatch(r'train\.py: error: cannot write (\S+): {}; kept: {} \((\d+) minibatches\); resume with: '
                         r'(python train\.py --resume {})'.format(reason, re.escape(ckpt), re.escape(run_dir)), line)
    assert match and match.group(1).startswith(run_dir), line
    done = int(match.group(2))
    assert done >= 100 and checkpoints.load_checkpoint(ckpt)['status']['iterations_done'] == done
    if small_tmpfs and fault == 'read-only':
        remount(out, 'rw')
    else:
        os.remove(os.path.join(out, 'filler') if small_tmpfs else flag)
    r = train_cli(*match.group(3).split()[2:], '--max-batches', str(done + 20))
    assert r.returncode == 0, r.stderr
    assert json.load(open(os.path.join(run_dir, 'results.json')))['iterations'] == done + 20
    assert [rec['iteration'] for rec in strict_json_lines(os.path.join(run_dir, 'log.jsonl'))] == \
        list(range(1, done + 21))


# ---------------------------------------------------------------- signals

# train.py with a signal delivered while the training function compiles.
SIGNAL_WHILE_COMPILING = """
import os, runpy, sys, time
sys.path.insert(0, {root!r})
import experiments
compile_train = experiments.Experiment.compile_train
def compile_and_receive_a_signal(self, *args, **kw):
    os.kill(os.getpid(), {signum})
    time.sleep(60)  # the signal arrives in here
    return compile_train(self, *args, **kw)
experiments.Experiment.compile_train = compile_and_receive_a_signal
sys.argv = [{train!r}] + {args!r}
runpy.run_path({train!r}, run_name='__main__')
"""


def train_with_signal_while_compiling(signum, args):
    code = SIGNAL_WHILE_COMPILING.format(root=ROOT, signum=int(signum), train=TRAIN, args=args)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_compiling_is_one_line_and_leaves_no_empty_run_directory(tmp_path, signum):
    out = tmp_path / 'runs'
    r = train_with_signal_while_compiling(signum, TINY + ['--max-batches', '50', '--output-dir', str(out)])
    assert r.returncode == parallel.INTERRUPTED
    assert one_line(r.stderr) == 'train.py: stopped by {}; no checkpoint was written'.format(signum.name)
    assert os.listdir(out) == []


def test_a_signal_while_a_resumed_run_compiles_keeps_its_checkpoint(run_copy):
    run_dir, ckpt = run_copy
    r = train_with_signal_while_compiling(signal.SIGTERM, ['--resume_file', ckpt, '--max-batches', '400'])
    assert r.returncode == parallel.INTERRUPTED
    assert one_line(r.stderr) == ('train.py: stopped by SIGTERM; kept: {0} (300 minibatches); resume with: '
                                  'python train.py --resume {1}'.format(ckpt, run_dir))
    assert checkpoints.load_checkpoint(ckpt)['status']['iterations_done'] == 300
    assert not os.path.exists(os.path.join(run_dir, rundirs.RunLock.FILE))


class SignalDuringReduction(parallel.SingleProcess):
    """Two processes as the main loop sees them, the other one never stopping: SIGTERM
    reaches this process while its reduction after minibatch `at` runs."""

    size = 2

    def __init__(self, loop_status, at):
        self.status, self.at = loop_status, at

    def allreduce_sum(self, array):
        if self.status()['iterations_done'] == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return np.asarray(array)  # the sum as it was before the signal: the other process's flags are 0


class Counter:
    """A 'model' whose step adds 1 to a shared variable."""

    def __init__(self):
        self.w = theano.shared(np.zeros(2, 'float32'), name='w')

    def step(self, batch, rng):
        self.w.set_value(self.w.get_value() + 1)
        return {'cost': float(self.w.get_value()[0]), 'n_nonfinite': 0}


def counter_loop(tmp_path, extensions, comm=None):
    data = np.zeros((40, 2), 'float32')
    stream = streams.DataStream(streams.ArrayDataset(features=data), streams.ShuffledScheme(40, 4, 0))
    m = Counter()
    loop = mainloop.MainLoop(m.step, stream, {'w': m.w}, extensions, 0, {'args': {}}, comm)
    return loop, m


def test_a_signal_during_the_reduction_of_the_stop_flags_is_kept(tmp_path):
    """The flag the signal handler sets while the processes' reduction runs is combined with
    the reduced flags, not overwritten by them: the run stops after the next minibatch and
    writes its checkpoint, instead of running on to the end."""
    ckpt = str(tmp_path / 'ckpt.npz')
    loop, m = counter_loop(tmp_path, [E.FinishAfter(max_batches=30), E.Checkpoint(ckpt)])
    loop.comm = SignalDuringReduction(lambda: loop.status, at=5)
    loop.run()
    assert loop.interrupted and loop.status['iterations_done'] == 6
    assert checkpoints.load_checkpoint(ckpt)['status']['iterations_done'] == 6


# ---------------------------------------------------------------- one writer per run directory

def test_a_second_writer_of_a_run_directory_is_refused_naming_the_holder(run_copy):
    run_dir, ckpt = run_copy
    hold = ('import sys, time; sys.path.insert(0, {!r}); import rundirs; rundirs.RunLock({!r}).acquire(); '
            'print("locked", flush=True); time.sleep(120)'.format(ROOT, run_dir))
    holder = subprocess.Popen([sys.executable, '-c', hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        r = train_cli('--resume_file', ckpt, '--max-batches', '400')
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2
    assert 'is in use by process {} on {}'.format(holder.pid, socket.gethostname()) in one_line(r.stderr)
    assert checkpoints.load_checkpoint(ckpt)['status']['iterations_done'] == 300


def test_the_lock_of_a_process_that_is_gone_is_taken_over(run_copy):
    run_dir, ckpt = run_copy
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()
    lock = os.path.join(run_dir, rundirs.RunLock.FILE)
    with open(lock, 'w') as f:  # what a run killed with kill -9 leaves
        json.dump({'pid': gone.pid, 'host': socket.gethostname(), 'since': '2026-01-01 00:00:00'}, f)
    r = train_cli('--resume_file', ckpt)  # finished: the final evaluation again
    assert r.returncode == 0, r.stderr
    assert '{} of process {} on {}, which no longer runs, is taken over.'.format(
        lock, gone.pid, socket.gethostname()) in r.stderr
    assert not os.path.exists(lock)


# ---------------------------------------------------------------- runs that go non-finite

def test_a_run_that_goes_non_finite_keeps_its_last_finite_checkpoint_and_fails(run_copy):
    run_dir, ckpt = run_copy
    r = train_cli('--resume_file', ckpt, '--lr', '1e300', '--max-batches', '400')
    assert r.returncode == parallel.NONFINITE
    line = ending(r.stderr)
    assert re.fullmatch(r'train\.py: error: the run went non-finite: the parameters became NaN or inf at minibatch '
                        r'30[12]; kept: {0} \(300 minibatches\); resume with: python train\.py --resume {1} '
                        r'\(try a lower --lr than 1e\+300, or other --model-args\)'.format(
                            re.escape(ckpt), re.escape(run_dir)), line), line
    state = checkpoints.load_checkpoint(ckpt)
    assert state['status']['iterations_done'] == 300 and checkpoints.finite(state['shared'].values())
    assert all(rec['iteration'] <= 302 for rec in strict_json_lines(os.path.join(run_dir, 'log.jsonl')))
    assert json.load(open(os.path.join(run_dir, 'results.json')))['iterations'] == 300  # the old results stay


def test_a_new_run_that_goes_non_finite_writes_no_checkpoint_and_fails(tmp_path):
    r = train_cli(*TINY, '--lr', '1e300', '--max-batches', '300', '--output-dir', str(tmp_path))
    assert r.returncode == parallel.NONFINITE
    assert re.fullmatch(r'train\.py: error: the run went non-finite: the parameters became NaN or inf at minibatch '
                        r'\d; no checkpoint was written \(try a lower --lr than 1e\+300, or other --model-args\)',
                        ending(r.stderr)), r.stderr
    run_dir, = glob.glob(str(tmp_path / 'diffusion_heartbeat_*'))
    assert not glob.glob(os.path.join(run_dir, '*.npz')) and not os.path.exists(os.path.join(run_dir, 'results.json'))
    assert len(strict_json_lines(os.path.join(run_dir, 'log.jsonl'))) < 10


def test_a_run_whose_cost_stays_non_finite_stops_and_says_so(tmp_path):
    """Finite parameters and a NaN cost (a model that gives no finite bound) for `patience`
    minibatches in a row: the guard stops the run and says why."""
    loop, m = counter_loop(tmp_path, [E.FinishAfter(max_batches=30), E.NonFiniteGuard(patience=5)])
    loop.step = lambda batch, rng: {'cost': float('nan'), 'n_nonfinite': 0}
    loop.run()
    assert loop.status['iterations_done'] == 5
    assert loop.nonfinite == '5 minibatches in a row, up to minibatch 5, had a NaN or inf cost or gradient'


def test_results_and_logs_are_valid_json_without_nan(tmp_path):
    path = str(tmp_path / 'r.json')
    rundirs.write_json(path, {'K_bits': float('nan'), 'curve': [np.float32('inf'), 1.5], 'n': np.int64(3)})
    assert json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(c)) == \
        {'K_bits': None, 'curve': [None, 1.5], 'n': 3}


def test_a_bound_far_below_the_null_model_is_warned_about():
    warning = estimators.implausible(-442882.0, -14.44, 'bits/seq')
    assert warning.startswith('K = -442882 bits/seq is far below the null model\'s L_null = -14.44')
    assert estimators.implausible(-9.4, -14.44, 'bits/seq') is None  # a short run's K, above L_null
    assert estimators.implausible(-3.8, -2.05, 'bits/pixel') is None  # an untrained image network's


@pytest.mark.parametrize('argv, message', [
    (['--dataset', 'heartbeat', '--model-args', 'p=1e-300'], '--model-args p=1e-300: p must be a number in (0, 1) '
                                                               'that float32 holds as neither 0 nor 1'),
    (['--dataset', 'heartbeat', '--model-args', 'p=1e-40'], 'p must be a number in (0, 1)'),  # a flushed denormal
    (['--dataset', 'heartbeat', '--model-args', 'p=0.9999999999'], 'p must be a number in (0, 1) that float32'),
])
def test_a_probability_that_float32_cannot_hold_is_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        train.main(argv + ['--max-batches', '1', '--output-dir', str(tmp_path / 'runs')])
    assert stop.value.code == 2 and message in one_line(capsys.readouterr().err)


def test_sampler_refuses_a_noise_std_that_is_not_a_finite_number(finished_run, capsys):
    for value in ('nan', 'inf'):
        with pytest.raises(SystemExit) as stop:
            sampler.main([os.path.join(finished_run, 'checkpoint.npz'), '--mode', 'denoise', '--noise-std', value,
                          '--out', finished_run + '-samples'])
        assert stop.value.code == 2
        assert error(capsys.readouterr().err) == '--noise-std {}: must be a finite number > 0'.format(value)


# ---------------------------------------------------------------- resume edge cases

@pytest.mark.parametrize('flag', ['--resume', '--convert-checkpoint'])
def test_an_empty_checkpoint_path_is_refused(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as stop:
        train.main([flag, '', '--max-batches', '1', '--model-args', 'n_train=500,n_eval=200'])
    assert stop.value.code == 2
    assert error(capsys.readouterr().err) == "{} is empty: give the {}checkpoint's file".format(
        flag, 'run directory or the ' if flag == '--resume' else '')


def test_a_checkpoint_alone_in_its_folder_resumes_with_a_new_log(finished_run, tmp_path):
    alone = tmp_path / 'alone'
    alone.mkdir()
    shutil.copy(os.path.join(finished_run, 'checkpoint.npz'), str(alone))
    r = train_cli('--resume_file', str(alone / 'checkpoint.npz'), '--max-batches', '310')
    assert r.returncode == 0, r.stderr
    assert 'No log.jsonl beside the checkpoint: a new one starts at minibatch 300' in r.stderr
    assert [rec['iteration'] for rec in strict_json_lines(str(alone / 'log.jsonl'))] == list(range(301, 311))


def test_a_log_shorter_than_the_checkpoint_expects_is_refused(run_copy, capsys):
    run_dir, ckpt = run_copy
    with open(os.path.join(run_dir, 'log.jsonl'), 'r+') as f:
        f.truncate(100)
    with pytest.raises(SystemExit) as stop:
        train.main(['--resume_file', ckpt])
    assert stop.value.code == 2
    assert 'log.jsonl has 100 bytes and the checkpoint expects at least' in one_line(capsys.readouterr().err)


def doctored_checkpoint(source, path, change):
    """A copy of the checkpoint `source` at `path` with its meta (a dict) and shared arrays changed."""
    state = checkpoints.load_checkpoint(source)
    meta = {'format': checkpoints.CHECKPOINT_FORMAT, 'version': checkpoints.CHECKPOINT_VERSION,
            'config': state['config'], 'status': state['status']}
    shared = dict(state['shared'])
    change(meta, shared)
    arrays = {checkpoints.SHARED_PREFIX + k: v for k, v in shared.items()}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def delete(*keys):
    def change(meta, shared):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


def setting(value, *keys):
    def change(meta, shared):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


MALFORMED = [
    ('plain_npy', None, 'is not a checkpoint of this project, or is damaged (a single array, not an .npz archive)'),
    ('no_config', delete('config'), 'is not a complete checkpoint of this project: it has no config'),
    ('no_status', delete('status'), 'it has no status'),
    ('no_seed', delete('config', 'args', 'seed'), 'it has no config.args.seed'),
    ('no_model', delete('config', 'model'), 'it has no config.model'),
    ('no_epochs', delete('status', 'epochs_done'), 'it has no status.epochs_done'),
    ('text_counter', setting('many', 'status', 'iterations_done'), "status.iterations_done is 'many'"),
    ('unknown_set', setting('imagenet', 'config', 'args', 'dataset'), "its dataset is 'imagenet'"),
    ('no_T', delete('config', 'model', 'T'), 'its model lacks T'),
    ('no_weights', lambda meta, shared: shared.pop('mlp.hidden0.W'), 'lacks parameter mlp.hidden0.W'),
]


@pytest.mark.parametrize('name, change, message', MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_checkpoint_is_one_line(finished_run, tmp_path, capsys, name, change, message):
    path = str(tmp_path / 'checkpoint.npz')
    if change is None:
        np.save(path, np.zeros(3))
        os.replace(path + '.npy', path)
    else:
        doctored_checkpoint(os.path.join(finished_run, 'checkpoint.npz'), path, change)
    with pytest.raises(SystemExit) as stop:
        train.main(['--resume_file', path])
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert message in line and path in line, line
    if name in ('plain_npy', 'no_seed', 'no_model', 'unknown_set', 'no_T', 'no_weights'):  # what evaluate.py reads
        with pytest.raises(SystemExit) as stop:
            evaluate.main([path])
        assert stop.value.code == 2 and message in one_line(capsys.readouterr().err)


def test_convert_checkpoint_replaces_an_existing_npz_only_with_overwrite(tmp_path, capsys):
    pkl, npz = str(tmp_path / 'checkpoint.pkl'), str(tmp_path / 'checkpoint.npz')
    old = {'shared': {'w': np.arange(3, dtype='float32')}, 'config': {'args': {'dataset': 'heartbeat'}},
           'status': {'iterations_done': 2, 'epochs_done': 0, 'batch_in_epoch': 2, 'seed': 0, 'wall_s': 1.0}}
    with open(pkl, 'wb') as f:
        pickle.dump(old, f, protocol=2)
    checkpoints.save_checkpoint(npz, dict(old, status=dict(old['status'], iterations_done=5)))
    with pytest.raises(SystemExit) as stop:
        train.main(['--convert-checkpoint', pkl])
    assert stop.value.code == 2
    assert error(capsys.readouterr().err) == '{} exists already; add --overwrite to replace it'.format(npz)
    assert checkpoints.load_checkpoint(npz)['status']['iterations_done'] == 5
    train.main(['--convert-checkpoint', pkl, '--overwrite'])
    assert checkpoints.load_checkpoint(npz)['status']['iterations_done'] == 2


def test_convert_checkpoint_of_an_npz_says_there_is_nothing_to_convert(tmp_path, capsys):
    npz = str(tmp_path / 'checkpoint.npz')
    checkpoints.save_checkpoint(npz, {'shared': {'w': np.arange(3, dtype='float32')}, 'status': {'iterations_done': 5}})
    before = open(npz, 'rb').read()
    with pytest.raises(SystemExit) as stop:
        train.main(['--convert-checkpoint', npz])
    assert stop.value.code == 2
    assert error(capsys.readouterr().err) == ('{} is an .npz checkpoint already: nothing to convert (--resume, '
                                              'evaluate.py and sampler.py read it as it is)'.format(npz))
    assert open(npz, 'rb').read() == before
    np.savez(str(tmp_path / 'other.npz'), x=np.zeros(2))  # an .npz that is no checkpoint
    with pytest.raises(SystemExit):
        train.main(['--convert-checkpoint', str(tmp_path / 'other.npz')])
    assert 'is not a checkpoint of this project' in one_line(capsys.readouterr().err)


def test_resuming_another_file_of_a_run_does_not_replace_its_checkpoint_without_overwrite(run_copy, capsys):
    run_dir, ckpt = run_copy
    with pytest.raises(SystemExit) as stop:
        train.main(['--resume_file', os.path.join(run_dir, 'best.npz')])
    assert stop.value.code == 2
    assert 'would replace {}'.format(ckpt) in one_line(capsys.readouterr().err)
    assert checkpoints.load_checkpoint(ckpt)['status']['iterations_done'] == 300


# ---------------------------------------------------------------- seeds and evaluate.py's partial file

BIG_SEED = str(2 ** 64)


def test_a_seed_outside_numpys_range_is_a_bad_flag_in_every_script(finished_run, tmp_path, capsys):
    ckpt = os.path.join(finished_run, 'checkpoint.npz')
    for main, argv in [(train.main, TINY + ['--max-batches', '1', '--output-dir', str(tmp_path)]),
                       (evaluate.main, [ckpt, '--n-examples', '10']),
                       (sampler.main, [ckpt, '--n', '2', '--out', str(tmp_path)])]:
        with pytest.raises(SystemExit) as stop:
            main(argv + ['--seed', BIG_SEED])
        assert stop.value.code == 2
        line = one_line(capsys.readouterr().err)
        assert '--seed {}: must be'.format(BIG_SEED) in line and "4294967295 (numpy's seed range)" in line
    assert os.listdir(tmp_path) == []


def test_the_partial_file_of_the_bound_holds_no_pickle_whatever_the_seed(finished_run, tmp_path):
    exp = experiments.from_checkpoint(os.path.join(finished_run, 'checkpoint.npz'))
    x, path = exp.test_x[:20], str(tmp_path / 'evaluation_test_partial.npz')
    np.savez(path, signature=np.array([1, None], dtype=object))  # what an older version left
    r = bound.heldout_bound(exp, x, n_t=2, seed=2 ** 64, partial_path=path)
    with np.load(path, allow_pickle=False) as f:
        assert int(f['units_done']) == 2 and f['signature'].dtype.kind == 'U'
    def recompute(*inputs):
        raise AssertionError('the saved sums were not picked up')
    again = bound.heldout_bound(exp, x, n_t=2, seed=2 ** 64, partial_path=path, fn=recompute)
    assert again['K_bits'] == r['K_bits']
