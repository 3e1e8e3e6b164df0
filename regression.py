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


# ---------------------------------------------------------------- toy networks (Appendix D.1)

class SwissRollRBF(Layer):
    """Normalised radial-basis-function network (Appendix D.1.1).

    One hidden layer of `n_hidden` Gaussian units shared over time,
    h_k = exp(-|x - c_k|^2 / (2 w_k^2)) / sum_l exp(...), and a separate affine
    read-out per time step to (z_mu, z_Sigma), 2 values each for 2-D data.
    local_linear=True (our addition, not in the paper): the read-out also sees
    h_k x, so each unit holds a local affine map instead of a constant; this is
    what lets the mean resolve a thin roll.
    Centres start at `init_points` (training points), widths at the mean distance
    to the nearest other centre.
    """

    def __init__(self, T_steps, rng, init_points, n_hidden=16, local_linear=True):
        super().__init__('rbf')
        n_dims = init_points.shape[1]
        centres = init_points[rng.choice(len(init_points), n_hidden, replace=False)]
        d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.eye(n_hidden) * 1e9
        self.centres = self.param('centres', centres)
        self.log_width = self.param('log_width', constant_init(n_hidden, np.log(d.min(1).mean())))
        n_features = n_hidden * (1 + n_dims) if local_linear else n_hidden
        self.readout = self.add(PerStepDense('rbf.readout', T_steps, n_features, 2 * n_dims, rng, 0.01))
        self.n_dims, self.local_linear = n_dims, local_linear

    def hidden(self, x):
        """h (n, K): normalised Gaussian responses."""
        d2 = T.sqr(x[:, None, :] - self.centres[None, :, :]).sum(axis=2)
        return T.nnet.softmax(-d2 / (2 * T.exp(2 * self.log_width)))

    def __call__(self, xt, t):
        h = self.hidden(xt)
        if self.local_linear:
            h = T.concatenate([h, (h[:, :, None] * xt[:, None, :]).flatten(2)], axis=1)
        z = self.readout(h, t - 1)
        return z[:, :self.n_dims], z[:, self.n_dims:]


class HeartbeatMLP(Layer):
    """Sigmoid MLP for the binary heartbeat (Appendix D.1.2): 20 inputs, 3 hidden layers
    of 50 shared over time, a separate read-out per time step to one logit per bit."""

    def __init__(self, T_steps, rng, n_dims=20, n_hidden=50, n_layers=3):
        super().__init__('mlp')
        sizes = [n_dims] + [n_hidden] * n_layers
        self.layers = [self.add(Dense('mlp.hidden{}'.format(i), a, b, rng))
                       for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
        self.readout = self.add(PerStepDense('mlp.readout', T_steps, n_hidden, n_dims, rng, 0.01))

    def __call__(self, xt, t):
        h = xt
        for layer in self.layers:
            h = T.nnet.sigmoid(layer(h))
        return self.readout(h, t - 1)
