"""The released dead-leaves model (models/deadleaves): the files its README lists, and a
bound on freshly generated dead-leaves images that agrees with the bound monitored in
training (so the checkpoint, the network it describes and the data pipeline fit together)."""
import hashlib
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


def test_the_readme_lists_each_file_with_its_sha256():
    text = open(os.path.join(MODEL, 'README.md')).read()
    listed = dict(re.findall(r'^\| (\S+) \| [\d,]+ bytes \| `([0-9a-f]{64})` \|$', text, re.M))
    assert 'checkpoint.npz' in listed and 'progress.csv' in listed
    for name, digest in listed.items():
        assert hashlib.sha256(open(os.path.join(MODEL, name), 'rb').read()).hexdigest() == digest, name


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
