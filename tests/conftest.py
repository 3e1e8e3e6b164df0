import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import util  # noqa: E402,F401  (configures Theano before any test imports it)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import experiments  # noqa: E402

# A tiny image network (released-code names) for tests that build image Experiments.
TINY_IMAGE_ARGS = dict(T=20, n_temporal_basis=3, n_hidden_dense_lower=8,
                       n_hidden_dense_lower_output=2, n_hidden_dense_upper=4, n_hidden_conv=3,
                       n_layers_conv=2, n_layers_dense_lower=2, n_layers_dense_upper=2)


@pytest.fixture
def stand_in_images(monkeypatch):
    """install(n_train, n_test, shape) makes datasets.load_images return random uint8
    images of that (C, H, W) shape instead of real files; returns {split: array}."""
    def install(n_train, n_test, shape):
        rng = np.random.default_rng(0)
        data = {'train': rng.integers(0, 256, (n_train,) + shape).astype(np.uint8),
                'test': rng.integers(0, 256, (n_test,) + shape).astype(np.uint8)}
        monkeypatch.setattr(experiments.datasets, 'load_images',
                            lambda name, split, path, **kw: data[split])
        return data
    return install
