"""The released models (models/*): the files each README lists; for dead leaves a bound on
freshly generated dead-leaves images that agrees with the bound monitored in training, and
for the toys a bound on part of the test set that agrees with the run's final one (so the
checkpoint, the network it describes and the data pipeline fit together)."""
import hashlib
import json
import os
import re

import numpy as np
import pytest

import bound
import checkpoints
import datasets
import experiments
import presets
import release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, 'models', 'deadleaves')

pytestmark = pytest.mark.slow  # builds and evaluates the released image network (python -m pytest -m "not slow" leaves it out)


@pytest.mark.parametrize('name', sorted(os.listdir(os.path.join(ROOT, 'models'))))  # every released model
def test_the_readme_lists_each_file_with_its_sha256(name):
    folder = os.path.join(ROOT, 'models', name)
    text = open(os.path.join(folder, 'README.md')).read()
    listed = dict(re.findall(r'^\| (\S+) \| [\d,]+ bytes \| `([0-9a-f]{64})` \|$', text, re.M))
    assert 'checkpoint.npz' in listed and 'progress.csv' in listed
    assert set(listed) == set(os.listdir(folder)) - {'README.md'}  # every file, none missing
    for file_name, digest in listed.items():
        assert hashlib.sha256(open(os.path.join(folder, file_name), 'rb').read()).hexdigest() == digest, file_name


def test_the_checkpoint_bounds_fresh_images_as_its_monitor_did():
    path = os.path.join(MODEL, 'checkpoint.npz')
    state = checkpoints.load_checkpoint(path)
    args = presets.checkpoint_model_config(state)
    images = datasets.deadleaves(160, size=args['image_size'], seed=12345)  # not the run's images
    exp = experiments.from_arrays('deadleaves', args, state['config']['args']['seed'], images[:120], images[120:])
    experiments.load_parameters(exp, state, path)
    r = bound.heldout_bound(exp, exp.test_x, 2, 0, progress=False)
    _, monitored, stderr = release.latest_K(state)
    assert np.isfinite(r['K_bits'])
    assert abs(r['K_bits'] - monitored) < 0.25 + 3 * (r['stderr_bits'] + stderr), (r['K_bits'], monitored)


@pytest.mark.parametrize('name, n', [('swissroll', 2000), ('heartbeat', 200)])
def test_a_released_toy_model_bounds_held_out_data_as_its_final_bound_did(name, n):
    folder = os.path.join(ROOT, 'models', name)
    exp = experiments.from_checkpoint(os.path.join(folder, 'checkpoint.npz'))
    with open(os.path.join(folder, 'results.json')) as f:
        final = json.load(f)
    r = bound.heldout_bound(exp, exp.test_x[:n], exp.final_draws, seed=5)  # other draws, a part of the test set
    tolerance = 4 * np.hypot(r['stderr_bits'], final['stderr_bits'])
    assert abs(r['K_bits'] - final['K_bits']) < tolerance, (r['K_bits'], final['K_bits'])
