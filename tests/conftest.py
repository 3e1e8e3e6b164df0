import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The suite's own Theano compile cache. A process that compiles reads the key of every module
# in the cache first (and lists them all again at its exit): in ~/.theano, which holds every
# other job's modules too (3,583 16 hours after it was begun), a tiny compiling process took
# 8.4 s of CPU time, against 1.6 s in a cache of its own (this machine's busy core). The
# user's THEANO_FLAGS come after this flag and win.
SUITE_COMPILEDIR = 'base_compiledir=' + os.path.join(os.path.expanduser('~'), '.theano-tests')
user_flags = os.environ.get('PROJECT_USER_THEANO_FLAGS', os.environ.get('THEANO_FLAGS', ''))
os.environ['PROJECT_USER_THEANO_FLAGS'] = SUITE_COMPILEDIR + (',' + user_flags if user_flags else '')

import backend  # noqa: E402,F401  (configures Theano before any test imports it)
import signal  # noqa: E402

# backend answers SIGTERM with one line and an exit that pytest would take for a failing
# test and go on: SIGTERM ends a test session at once, as before (the scripts' handling is
# tested in subprocesses)
signal.signal(signal.SIGTERM, signal.SIG_DFL)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# A tiny heartbeat run's flags (add --max-batches): T=100, so its final bound takes 99 draws,
# not 1,999; test_train_cli.py, test_faults.py and test_parallel.py train it.
TINY_HEARTBEAT = ['--dataset', 'heartbeat', '--seed', '7', '--ext-every-n', '100',
                  '--model-args', 'T=100,n_train=2000,n_eval=400,n_final_eval=50,n_hidden=20']

# A tiny image network (released-code names) for tests that build image Experiments.
TINY_IMAGE_ARGS = dict(T=20, n_temporal_basis=3, n_hidden_dense_lower=8,
                       n_hidden_dense_lower_output=2, n_hidden_dense_upper=4, n_hidden_conv=3,
                       n_layers_conv=2, n_layers_dense_lower=2, n_layers_dense_upper=2)


@pytest.fixture
def stand_in_images():
    """make(n_train, n_test, shape) -> {split: random uint8 images of that (C, H, W) shape},
    for experiments.from_arrays."""
    def make(n_train, n_test, shape):
        rng = np.random.default_rng(0)
        return {'train': rng.integers(0, 256, (n_train,) + shape).astype(np.uint8),
                'test': rng.integers(0, 256, (n_test,) + shape).astype(np.uint8)}
    return make


# A tiny digits run with the fast preset (an adaptive proposal, an average of the parameters,
# Adam), 20 minibatches: test_training_estimate.py resumes a copy of it, test_parallel.py
# trains it again on two processes. Its 'train_t_history=2' lets the proposal leave its
# uniform start within those minibatches.
FAST_DIGITS = ['--dataset', 'digits', '--fidelity', 'fast', '--seed', '3', '--ext-every-n', '10', '--batch-size', '50',
               '--model-args', 'T=20,n_temporal_basis=3,n_hidden_dense_lower=16,n_hidden_dense_lower_output=2,'
               'n_hidden_dense_upper=8,n_hidden_conv=6,n_layers_conv=2,n_layers_dense_lower=2,n_layers_dense_upper=2,'
               'train_t_history=2,ema=0.9', '--max-batches', '20']


@pytest.fixture(scope='session')
def fast_digits_run(tmp_path_factory):
    """The run directory of train.py FAST_DIGITS, one process (tests that change it copy it)."""
    out = tmp_path_factory.mktemp('fast_digits')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + FAST_DIGITS + ['--output-dir', str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(out / 'diffusion_*'))
    return run_dir
