"""widen.py: a trained fully convolutional network written as a wider one that computes the
same bound, which train.py then resumes; the one-line refusals."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

import bound
import checkpoints
import experiments
import widen
from test_folder_dataset import make_images

pytestmark = pytest.mark.slow  # trains and widens a tiny image network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# two layers of two scales, so that a new channel could reach an old one through a convolution
# and the per-pixel layers; Adam and an average of the parameters, as the fast dead-leaves run
TINY = ['--fidelity', 'fast', '--seed', '3', '--max-batches', '4', '--ext-every-n', '4', '--batch-size', '9',
        '--model-args', 'T=10,n_temporal_basis=2,image_size=8,crop=8,n_scales=2,n_hidden_conv=3,n_layers_conv=2,'
        'n_hidden_dense_upper=4,n_layers_dense_upper=2,ema=0.9']


def run(args):
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope='module')
def narrow_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('widen')
    images = make_images(tmp / 'images')
    r = run([os.path.join(ROOT, 'train.py'), '--dataset', 'folder:' + images] + TINY + ['--output-dir', str(tmp / 'runs')])
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(tmp / 'runs' / 'diffusion_*'))
    return run_dir


def heldout(path, ema):
    exp = experiments.from_checkpoint(path, ema=ema)
    return bound.heldout_bound(exp, exp.test_x[:6], 2, 0, progress=False)['K_bits']


def test_the_wider_network_bounds_the_same_and_resumes(narrow_run, tmp_path):
    wide_dir = str(tmp_path / 'wide')
    r = run([os.path.join(ROOT, 'widen.py'), narrow_run, wide_dir, '--n-hidden-conv', '5'])
    assert r.returncode == 0, r.stderr
    narrow, wide = (os.path.join(d, 'checkpoint.npz') for d in (narrow_run, wide_dir))
    state = checkpoints.load_checkpoint(wide)
    assert state['shared']['conv1.W1'].shape == (5, 5, 3, 3) and state['shared']['dense_upper0.W'].shape == (5, 4)
    assert state['config']['model']['n_hidden_conv'] == 5 and state['status']['iterations_done'] == 4
    for ema in (True, False):  # the same function: the same K on the same images and draws
        assert heldout(wide, ema) == pytest.approx(heldout(narrow, ema), abs=1e-5)
    r = run([os.path.join(ROOT, 'train.py'), '--resume', wide_dir, '--max-batches', '6'])
    assert r.returncode == 0, r.stderr
    trained = checkpoints.load_checkpoint(wide)
    assert trained['status']['iterations_done'] == 6
    assert np.abs(trained['shared']['dense_upper0.W'][3:]).max() > 0  # the new channels now reach the features


def test_embed_zeroes_only_what_old_outputs_read_from_new_inputs():
    old, fresh = np.ones((2, 2, 3, 3), np.float32), np.full((4, 4, 3, 3), 7, np.float32)
    wide = widen.embed(old, fresh, widen.axes_of('conv1.W0'))
    assert (wide[:2, :2] == 1).all() and (wide[:2, 2:] == 0).all() and (wide[2:] == 7).all()
    dense = widen.embed(np.ones((2, 3), np.float32), np.full((4, 3), 7, np.float32), widen.axes_of('dense_upper0.W'))
    assert (dense[:2] == 1).all() and (dense[2:] == 0).all()


@pytest.mark.parametrize('width', ['3', '2'])
def test_a_width_not_above_the_checkpoint_is_one_line(narrow_run, tmp_path, width):
    r = run([os.path.join(ROOT, 'widen.py'), narrow_run, str(tmp_path / 'w'), '--n-hidden-conv', width])
    assert r.returncode == 2 and 'is not wider than the checkpoint\'s 3' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / 'w')


def test_a_network_with_a_dense_path_is_refused(fast_digits_run, tmp_path):
    r = run([os.path.join(ROOT, 'widen.py'), fast_digits_run, str(tmp_path / 'w'), '--n-hidden-conv', '12'])
    assert r.returncode == 2 and 'fully convolutional' in r.stderr
