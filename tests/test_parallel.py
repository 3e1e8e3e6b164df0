"""Data parallelism over MPI (parallel.py): mpiexec -n 2 gives one process's numbers, a
checkpoint does not depend on the number of processes, a failing process ends the job,
and each process gets its share of the node's cores."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_DIGITS, TINY_HEARTBEAT as HEARTBEAT

import parallel
import checkpoints
import backend
import rundirs

pytestmark = pytest.mark.slow  # runs MPI launches (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = parallel.mpiexec()
TINY_DIGITS = ['--dataset', 'digits', '--seed', '5', '--max-batches', '20', '--ext-every-n', '10', '--batch-size', '50',
               '--model-args', 'T=20,n_temporal_basis=3,n_hidden_dense_lower=16,n_hidden_dense_lower_output=2,'
               'n_hidden_dense_upper=8,n_hidden_conv=6,n_layers_conv=2,n_layers_dense_lower=2,n_layers_dense_upper=2,'
               'conv_path=True']
TINY_HEARTBEAT = HEARTBEAT + ['--max-batches', '300']


# A job still running after this long is hung: a guard, not a measure. A fixture's two runs
# took 150 s on one core beside two other jobs, so the 600 s of before was within reach of
# an overloaded core.
HANG_S = 1800


def run_job(cmd, timeout=HANG_S):
    """(exit code, stderr) of a job run in its own session; a job still running after
    `timeout` seconds is hung: it is killed, with every process it started, and the test fails."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail('the job hung:\n' + err)
    return proc.returncode, err


def train(args, processes, out):
    prefix = [MPIEXEC, '-n', str(processes)] if processes > 1 else []
    code, err = run_job(prefix + [sys.executable, os.path.join(ROOT, 'train.py')] + args + ['--output-dir', str(out)])
    assert code == 0, err
    run_dir, = glob.glob(str(out / 'diffusion_*'))
    return run_dir


def test_the_install_brings_mpiexec():
    assert MPIEXEC, 'mpiexec not found: the install (requirements.lock) brings MPICH'


@pytest.fixture(scope='module')
def digits_runs(tmp_path_factory):
    one = train(TINY_DIGITS, 1, tmp_path_factory.mktemp('one'))
    two = train(TINY_DIGITS, 2, tmp_path_factory.mktemp('two'))
    return one, two


def test_two_processes_train_the_same_parameters_as_one(digits_runs):
    one, two = (checkpoints.load_checkpoint(os.path.join(d, 'checkpoint.npz')) for d in digits_runs)
    assert one['status']['iterations_done'] == two['status']['iterations_done'] == 20
    assert sorted(one['shared']) == sorted(two['shared'])
    for name, a in one['shared'].items():
        b = two['shared'][name]
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1e-8, np.abs(a).max()), err_msg=name)
    assert two['config']['sessions'][0]['processes'] == 2


@pytest.fixture(scope='module')
def fast_runs(fast_digits_run, tmp_path_factory):
    """conftest's fast run (an adaptive proposal, an average, Adam) and the same on two processes."""
    return fast_digits_run, train(FAST_DIGITS, 2, tmp_path_factory.mktemp('fast2'))


def test_two_processes_train_a_fast_run_as_one(fast_runs):
    """The adaptive proposal sees every example's KL, summed over processes, so both
    runs draw the same steps; the average and Adam's moments agree too."""
    one, two = (checkpoints.load_checkpoint(os.path.join(d, 'checkpoint.npz'))['shared'] for d in fast_runs)
    assert sorted(one) == sorted(two) and 'train_t.losses' in one and any(k.startswith('ema/') for k in one)
    for name, a in one.items():
        np.testing.assert_allclose(two[name], a, rtol=1e-4, atol=1e-4 * max(1e-8, np.abs(a).max()), err_msg=name)
    r1, r2 = (json.load(open(os.path.join(d, 'results.json'))) for d in fast_runs)
    assert abs(r1['K_bits'] - r2['K_bits']) < 1e-3


def test_two_processes_report_one_processs_bound(digits_runs):
    one, two = (json.load(open(os.path.join(d, 'results.json'))) for d in digits_runs)
    assert abs(one['K_bits'] - two['K_bits']) < 1e-4 and one['n_eval'] == two['n_eval']
    assert abs(one['stderr_bits'] - two['stderr_bits']) < 1e-4


def test_sampling_on_two_processes_gives_one_processs_samples(digits_runs, tmp_path):
    ckpt = os.path.join(digits_runs[0], 'checkpoint.npz')
    out = {}
    for n in (1, 2):
        prefix = [MPIEXEC, '-n', '2'] if n == 2 else []
        code, err = run_job(prefix + [sys.executable, os.path.join(ROOT, 'sampler.py'), ckpt, '--n', '7', '--frames', '3',
                                      '--batch-size', '3', '--out', str(tmp_path / str(n))])
        assert code == 0, err
        with np.load(str(tmp_path / str(n) / 'sample.npz')) as f:
            out[n] = f['samples'], f['frames']
    np.testing.assert_allclose(out[2][0], out[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2][1], out[1][1], rtol=1e-5, atol=1e-6)


def test_interrupted_two_process_run_resumes_on_one(tmp_path):
    # 1,000 minibatches: the signal sent at 'iter 100' lands well before the end even when a
    # loaded machine delays it (with 300, 200 minibatches of a few ms were the margin)
    args = TINY_HEARTBEAT[:TINY_HEARTBEAT.index('--max-batches')] + ['--max-batches', '1000'] + \
        TINY_HEARTBEAT[TINY_HEARTBEAT.index('--max-batches') + 2:]
    uninterrupted = json.load(open(os.path.join(train(args, 1, tmp_path / 'a'), 'results.json')))
    cmd = [MPIEXEC, '-n', '2', sys.executable, os.path.join(ROOT, 'train.py')] + args + [
        '--output-dir', str(tmp_path / 'b')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith('iter 100'):
                break
        proc.send_signal(signal.SIGINT)  # mpiexec passes it on to every process
        _, err = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # hung: neither it nor its processes stay behind
    assert proc.returncode == 130, err
    run_dir, = glob.glob(str(tmp_path / 'b' / 'diffusion_*'))
    ckpt = os.path.join(run_dir, 'checkpoint.npz')
    assert 100 <= checkpoints.load_checkpoint(ckpt)['status']['iterations_done'] < 1000
    code, err = run_job([sys.executable, os.path.join(ROOT, 'train.py'), '--resume_file', ckpt])
    assert code == 0, err
    resumed = json.load(open(os.path.join(run_dir, 'results.json')))
    assert abs(resumed['K_bits'] - uninterrupted['K_bits']) < 1e-4


def test_a_failing_process_ends_the_job_within_seconds(tmp_path):
    """Process 1 finds a corrupt data file, process 0 a good one: process 0 would wait for
    process 1 in the first Allreduce; the job ends with process 1's message instead."""
    import datasets
    good, bad = tmp_path / 'good', tmp_path / 'bad'
    good.mkdir()
    bad.mkdir()
    rng = np.random.default_rng(0)
    datasets.write_images(str(good / 'mnist.hdf5'), {s: rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
                                                    for s, n in (('train', 60), ('test', 10))})
    (bad / 'mnist.hdf5').write_bytes(b'not an hdf5 file')
    args = [sys.executable, os.path.join(ROOT, 'train.py'), '--dataset', 'mnist', '--max-batches', '5',
            '--model-args', 'T=10,n_hidden_dense_lower=8', '--output-dir', str(tmp_path / 'runs')]
    start = time.time()
    code, err = run_job([MPIEXEC, '-n', '1'] + args + ['--data-path', str(good), ':', '-n', '1'] + args
                        + ['--data-path', str(bad)])
    assert code != 0
    assert 'not a readable HDF5 file' in err and 'process 1 of 2 stopped' in err
    assert time.time() - start < 120


# ---------------------------------------------------------------- a signal to one process of two

# train.py under mpiexec -n 2; the process of rank {rank} receives SIGTERM at one moment
# (MOMENTS), the other one runs on. The training step is not compiled (a step that changes
# nothing, on both processes): what matters is where each process waits, and compiling
# would take half a minute of each test.
SIGNAL_ONE_PROCESS = """
import os, runpy, signal, sys, time
sys.path.insert(0, {root!r})
sys.argv = [{train!r}] + {args!r}
import backend
import experiments, mainloop, steprules
def no_op_step(self, step_rule, comm=None, average=None):
    return (lambda batch, rng: {{'cost_bits_per_dim': 0.0, 'n_nonfinite': 0}}), steprules.shared_scalar(
        0, 'optimizer.n_nonfinite', 'int64')
experiments.Experiment.compile_train = no_op_step
if os.environ['PMI_RANK'] == '{rank}':
{patch}
runpy.run_path({train!r}, run_name='__main__')
"""
SIGNAL_HERE = 'os.kill(os.getpid(), signal.SIGTERM); time.sleep(120)'  # the signal arrives in the sleep
MOMENTS = {
    # before MPI starts: the other process would wait in MPI_Init
    'starting': '    ' + SIGNAL_HERE,
    # the other process waits in the first reduction of the stop flags
    'compiling': """    def compile_train(self, *args, **kw):
        {}
    experiments.Experiment.compile_train = compile_train""".format(SIGNAL_HERE),
    # the other process waits in the bound's sums
    'final evaluation': """    import estimators
    def heldout_report(*args, **kw):
        {}
    estimators.heldout_report = heldout_report""".format(SIGNAL_HERE),
    # the signal comes after minibatch 3: every process stops after it
    'training': """    notify = mainloop.MainLoop._notify
    def notify_and_signal(self, event):
        notify(self, event)
        if event == 'batch' and self.status['iterations_done'] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    mainloop.MainLoop._notify = notify_and_signal""",
}
# --ext-every-n past the last minibatch: no monitored bound, so the signalled process of
# 'final evaluation' compiles nothing on its way there (waiting for the Theano cache's
# compile lock, which other jobs on the machine held, took 263 s once).
SHORT_HEARTBEAT = ['--dataset', 'heartbeat', '--max-batches', '6', '--ext-every-n', '7',
                   '--model-args', 'T=50,n_train=600,n_eval=50,n_final_eval=20,n_hidden=10']


def signal_one_process(out, rank, moment):
    args = SHORT_HEARTBEAT + ['--output-dir', str(out)]
    code = SIGNAL_ONE_PROCESS.format(root=ROOT, train=os.path.join(ROOT, 'train.py'), args=args, rank=rank,
                                     patch=MOMENTS[moment])
    return run_job([MPIEXEC, '-n', '2', sys.executable, '-c', code])


@pytest.mark.parametrize('rank', [1, 0])
@pytest.mark.parametrize('moment', ['starting', 'compiling', 'final evaluation'])
def test_a_signal_to_one_process_outside_the_minibatches_ends_the_job_in_one_line(tmp_path, rank, moment):
    """The signalled process says so and ends every process (MPI_Abort, exit 130); the
    writer, signalled after training, names the checkpoint that is kept."""
    code, err = signal_one_process(tmp_path / 'runs', rank, moment)
    assert code == parallel.INTERRUPTED, err
    assert 'Traceback' not in err and 'BAD TERMINATION' not in err, err
    if moment == 'starting':
        assert 'train.py: stopped by SIGTERM\n' in err
        return
    assert 'process {} of 2 stopped (exit 130); ending the job\n'.format(rank) in err, err
    if rank == 0:
        runs = glob.glob(str(tmp_path / 'runs' / 'diffusion_*'))
        said = 'kept: {}'.format(os.path.join(runs[0], 'checkpoint.npz')) if runs else 'no checkpoint was written'
        assert 'train.py: stopped by SIGTERM; ' + said in err, err
        assert bool(runs) == (moment == 'final evaluation')  # a new run stopped before it wrote leaves nothing
        assert not glob.glob(str(tmp_path / 'runs' / '*' / rundirs.RunLock.FILE))


@pytest.mark.parametrize('rank', [1, 0])
def test_a_signal_to_one_process_in_training_stops_both_after_the_same_minibatch(tmp_path, rank):
    code, err = signal_one_process(tmp_path, rank, 'training')
    assert code == parallel.INTERRUPTED, err
    assert 'ending the job' not in err and 'Traceback' not in err, err
    run_dir, = glob.glob(str(tmp_path / 'diffusion_*'))
    assert checkpoints.load_checkpoint(os.path.join(run_dir, 'checkpoint.npz'))['status']['iterations_done'] == 3


@pytest.mark.parametrize('env, expected', [
    ({}, (1, 1)),
    ({'PMI_SIZE': '4', 'MPI_LOCALNRANKS': '2'}, (4, 2)),  # MPICH's mpiexec
    ({'OMPI_COMM_WORLD_SIZE': '8', 'OMPI_COMM_WORLD_LOCAL_SIZE': '4'}, (8, 4)),  # Open MPI
    ({'SLURM_STEP_NUM_TASKS': '7', 'SLURM_STEP_TASKS_PER_NODE': '2(x3),1'}, (7, 2)),  # srun
])
def test_processes_and_threads_from_the_launcher(monkeypatch, env, expected):
    for name in ('PMI_SIZE', 'MPI_LOCALNRANKS', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_SIZE',
                 'SLURM_STEP_NUM_TASKS', 'SLURM_STEP_TASKS_PER_NODE', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(16)))
    monkeypatch.setattr(os, 'cpu_count', lambda: 16)
    assert backend.launched_processes() == expected
    backend.default_threads()
    threads = os.environ.get('OMP_NUM_THREADS')
    assert threads == (None if expected[0] == 1 else str(16 // expected[1]))
    assert os.environ.get('OPENBLAS_NUM_THREADS') == threads
    monkeypatch.setenv('OMP_NUM_THREADS', '3')  # an explicit setting wins
    backend.default_threads()
    assert os.environ['OMP_NUM_THREADS'] == '3'
