"""Reverse sampling (paper section 2.5): x^T ~ p(x^T), then x^{t-1} ~ p(x^{t-1} | x^t)."""
import util  # noqa: F401  (configures Theano before it is imported)

import numpy as np
import theano
import theano.tensor as T

import model as M

floatX = theano.config.floatX


def compile_reverse_kernel(diffusion, x_ndim):
    """A function (xt, t) -> (mu, Sigma) of the Gaussian reverse kernel, or (f_b,) for binomial."""
    xt = T.TensorType(floatX, (False,) * x_ndim)('xt')
    t = T.lvector('t')
    out = diffusion.reverse_kernel(xt, t)
    return theano.function([xt, t], list(out) if isinstance(out, tuple) else [out])


def sample_trajectory(diffusion, kernel, shape, rng, keep=()):
    """Samples x^0 (all T reverse steps) and the frames x^t for t in `keep`.

    kernel: from compile_reverse_kernel. Returns (x0, {t: x^t}).
    """
    n = shape[0]
    if isinstance(diffusion, M.BinomialDiffusion):
        x = (rng.random(shape) < diffusion.p).astype(floatX)
    else:
        x = rng.standard_normal(shape).astype(floatX)
    frames = {diffusion.T_steps: x} if diffusion.T_steps in keep else {}
    for t in range(diffusion.T_steps, 0, -1):
        out = kernel(x, np.full(n, t, dtype='int64'))
        if isinstance(diffusion, M.BinomialDiffusion):
            x = (rng.random(shape) < out[0]).astype(floatX)
        else:
            mu, sigma = out
            x = (mu + np.sqrt(sigma) * rng.standard_normal(shape)).astype(floatX)
        if t - 1 in keep:
            frames[t - 1] = x
    return x, frames
