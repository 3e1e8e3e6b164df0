"""Reverse-process networks (paper Appendix D) and the layers they are made of.

A network maps x^t to read-out coefficients; model.py turns those into the mean
and variance of p(x^{t-1} | x^t). Every parameter is a named Theano shared
variable with an explicit initialisation.
"""
import util  # noqa: F401  (configures Theano before it is imported)

import numpy as np
import theano
import theano.tensor as T

floatX = theano.config.floatX


# ---------------------------------------------------------------- initialisation

def gaussian_init(rng, shape, std):
    """Isotropic Gaussian weights N(0, std^2)."""
    return rng.normal(0.0, std, size=shape)


def orthogonal_init(rng, shape):
    """A (rows x cols) matrix with orthonormal rows or columns (QR of a Gaussian)."""
    rows, cols = shape
    q, r = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


def constant_init(shape, value=0.0):
    return np.full(shape, value)


# ---------------------------------------------------------------- layers

class Layer:
    """Something with named parameters; `params` lists them, sub-layers included."""

    def __init__(self, name):
        self.name = name
        self.params = []

    def param(self, key, value):
        p = theano.shared(np.asarray(value, dtype=floatX), name='{}.{}'.format(self.name, key))
        self.params.append(p)
        return p

    def add(self, layer):
        self.params.extend(layer.params)
        return layer


class Dense(Layer):
    """x W + b; W orthogonal (the released code's choice) or Gaussian with `std`."""

    def __init__(self, name, n_in, n_out, rng, std=None):
        super().__init__(name)
        w = orthogonal_init(rng, (n_in, n_out)) if std is None else gaussian_init(rng, (n_in, n_out), std)
        self.W = self.param('W', w)
        self.b = self.param('b', constant_init(n_out))

    def __call__(self, x):
        return T.dot(x, self.W) + self.b


class PerStepDense(Layer):
    """A separate affine read-out for every time step t (Appendix D.1): x W_t + b_t."""

    def __init__(self, name, n_steps, n_in, n_out, rng, std):
        super().__init__(name)
        self.W = self.param('W', gaussian_init(rng, (n_steps, n_in, n_out), std))
        self.b = self.param('b', constant_init((n_steps, n_out)))

    def __call__(self, x, t_index):
        """x: (n, n_in); t_index: (n,) int, 0-based step."""
        return T.batched_dot(x, self.W[t_index]) + self.b[t_index]
