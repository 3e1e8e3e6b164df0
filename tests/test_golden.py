"""Golden numbers: short fixed-seed runs of train.py give exactly the stored K and
parameters (a hash of their bytes), on any x86-64 machine with AVX2 and the locked
environment.

The project's runs are deterministic to the last digit in a given environment: minibatch
order and noise derive from the seed and the iteration. What changes the last digits
(measured: K by about 1e-8 to 1e-10 relative): the instruction set the code runs with
(Theano's and the project's C code compiled for the machine, -march=native; OpenBLAS's
kernel family, SkylakeX against Haswell; numpy's AVX-512 ufuncs) and the number of
threads (1 against 2); and, by their nature, other versions of numpy, scipy, Theano or
OpenBLAS, other THEANO_FLAGS, another compiler, and any change of the model code or its
defaults. So the golden runs pin the x86-64-v3 baseline (AVX2 with FMA) for all three
(DIFFUSION_ISA=avx2, backend.pin_isa), which AVX2 and AVX-512 machines both run, and two
threads. When a figure differs, the message names the parts of the recorded environment
that differ, the instruction sets first.

    python tests/test_golden.py --update [NAME ...]   # record the figures anew (after a deliberate
                                                      # change): the named runs, else all

digits_code is the digits run with the released code's choices (--fidelity code), so that
the code preset's numbers are pinned as well as the paper preset's.
"""
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains the golden short runs (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import checkpoints

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden.json')
RUNS = {
    'heartbeat': ['--dataset', 'heartbeat', '--seed', '3', '--max-batches', '300', '--ext-every-n', '150',
                  '--model-args', 'n_train=2000,n_eval=400,n_final_eval=50,n_hidden=20'],
    'swissroll': ['--dataset', 'swissroll', '--seed', '3', '--max-batches', '300', '--ext-every-n', '150',
                  '--model-args', 'n_train=2000,n_eval=200'],
    'digits': ['--dataset', 'digits', '--seed', '3', '--max-batches', '20', '--ext-every-n', '10',
               '--batch-size', '50', '--model-args', 'T=20,n_temporal_basis=3,n_hidden_dense_lower=16,'
               'n_hidden_dense_lower_output=2,n_hidden_dense_upper=8,n_hidden_conv=6,n_layers_conv=2,'
               'n_layers_dense_lower=2,n_layers_dense_upper=2,conv_path=True'],
    'digits_code': ['--dataset', 'digits', '--fidelity', 'code', '--seed', '3', '--max-batches', '20',
                    '--ext-every-n', '10', '--batch-size', '50', '--model-args',
                    'T=20,n_temporal_basis=3,n_hidden_dense_lower=16,n_hidden_dense_lower_output=2,'
                    'n_hidden_dense_upper=8,n_hidden_conv=6,n_layers_conv=2,n_layers_dense_lower=2,'
                    'n_layers_dense_upper=2'],
}
PINNED = {'DIFFUSION_ISA': 'avx2', 'OMP_NUM_THREADS': '2', 'OPENBLAS_NUM_THREADS': '2'}
# environment entries that do not bear on the numbers; 'isa' (the machine's) is shown only
# beside a difference of the pinned ones
NOT_NUMERIC = ('command', 'git_commit', 'git_dirty', 'project_version', 'source', 'cores', 'platform', 'cpu',
               'isa', 'NPY_DISABLE_CPU_FEATURES')
# what the instruction set changes (provenance.isa_record), named first when a figure differs
ISA_KEYS = ('isa_pinned', 'c_march', 'openblas_core', 'numpy_simd', 'cxx')


def run(name, output_dir):
    """(K_bits, sha256 of the trained parameters, environment) of one golden run, made by
    train.py in a child process with PINNED settings."""
    subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + RUNS[name] + ['--output-dir', str(output_dir)],
                   env=dict(os.environ, **PINNED), check=True, capture_output=True, timeout=900)
    run_dir, = [os.path.join(output_dir, d) for d in os.listdir(output_dir)]
    results = json.load(open(os.path.join(run_dir, 'results.json')))
    shared = checkpoints.load_checkpoint(os.path.join(run_dir, 'checkpoint.npz'))['shared']
    digest = hashlib.sha256()
    for key in sorted(shared):
        digest.update(key.encode() + np.ascontiguousarray(shared[key]).tobytes())
    return results['K_bits'], digest.hexdigest(), results['sessions'][-1]['environment']


def comparable(env):
    """The environment's numeric parts, without the install paths: the BLAS by its file name,
    THEANO_FLAGS without the blas.ldflags that name its folder."""
    env = {k: v for k, v in env.items() if k not in NOT_NUMERIC}
    if env.get('blas'):
        env['blas'] = os.path.basename(env['blas'])
    if env.get('theano_flags'):
        env['theano_flags'] = re.sub(r'"?blas\.ldflags=[^"]*"?', 'blas.ldflags=<BLAS>', env['theano_flags'])
        env['theano_flags'] = re.sub(r',?"?base_compiledir=[^,"]*"?', '', env['theano_flags'])  # the cache's place
    return env


def environment_changes(recorded, now):
    """'key: then, now' for every numeric part of the environment that differs, the
    instruction sets first (with the machine's beside them)."""
    before, after = comparable(recorded), comparable(now)
    keys = [k for k in ISA_KEYS if before.get(k) != after.get(k)]
    changes = ['{}: {!r} then, {!r} now'.format(k, before.get(k), after.get(k)) for k in keys]
    if changes:
        changes.insert(0, 'instruction set (machine {} then, {} now)'.format(recorded.get('isa'), now.get('isa')))
    return changes + ['{}: {!r} then, {!r} now'.format(k, before.get(k), after.get(k))
                      for k in sorted(set(before) | set(after))
                      if k not in ISA_KEYS and before.get(k) != after.get(k)]


@pytest.mark.parametrize('name', sorted(RUNS))
def test_short_run_reproduces_golden_figures(name, tmp_path):
    golden = json.load(open(GOLDEN))
    K_bits, params, environment = run(name, tmp_path)
    expected = golden['runs'][name]
    if (K_bits, params) != (expected['K_bits'], expected['params_sha256']):
        changes = environment_changes(expected['environment'], environment) or ['none: the code changed']
        cores = len(os.sched_getaffinity(0))
        if cores < int(PINNED['OPENBLAS_NUM_THREADS']):
            changes.insert(0, 'this process may use {} core(s) (taskset?), the golden runs {} threads: run them on '
                              'more cores'.format(cores, PINNED['OPENBLAS_NUM_THREADS']))
        pytest.fail('{}: K = {!r}, parameters {} but the golden figures are K = {!r}, parameters {}; '
                    'environment changes: {}'.format(name, K_bits, params[:12], expected['K_bits'],
                                                     expected['params_sha256'][:12], '; '.join(changes)))


def update(output_dir, names):
    """Record the golden figures of the runs `names` on this machine and environment; the
    others keep theirs."""
    runs = json.load(open(GOLDEN))['runs'] if os.path.exists(GOLDEN) else {}
    for name in names:
        folder = os.path.join(output_dir, name)
        os.makedirs(folder)
        K_bits, params, environment = run(name, folder)
        runs[name] = {'K_bits': K_bits, 'params_sha256': params, 'environment': environment,
                      'command': ' '.join('{}={}'.format(*kv) for kv in PINNED.items())
                      + ' python train.py ' + ' '.join(RUNS[name])}
    with open(GOLDEN, 'w') as f:
        json.dump({'runs': runs}, f, indent=2, sort_keys=True)
        f.write('\n')


if __name__ == '__main__':
    import tempfile
    if sys.argv[1:2] != ['--update'] or not set(sys.argv[2:]) <= set(RUNS):
        sys.exit('usage: python tests/test_golden.py --update [NAME ...]; names: ' + ', '.join(sorted(RUNS)))
    with tempfile.TemporaryDirectory() as folder:
        update(folder, sys.argv[2:] or sorted(RUNS))
    print('written', GOLDEN)
