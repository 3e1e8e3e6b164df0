"""The data sets (SPEC section 8): the paper's toy sets here, made from a seed.

The Swiss roll is a 2-D spiral (t cos t, t sin t), t uniform in [1.5 pi, 4.5 pi],
with isotropic Gaussian noise of std `noise` in those units, then centred and
divided by one constant so that the per-dimension variance is 1 (paper section 3).
The binary heartbeat is 20 bits with a 1 in every 5th bin at a random phase
(Appendix D.1.2).
"""
import numpy as np
from scipy.special import logsumexp

SWISSROLL_T = (1.5 * np.pi, 4.5 * np.pi)
SWISSROLL_NOISE = 0.01          # std of the roll's noise, in spiral units (before scaling)
HEARTBEAT_LENGTH, HEARTBEAT_PERIOD = 20, 5


def spiral(t):
    """Points on the noiseless roll, (n, 2)."""
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1)


def swissroll_normalisation(n=200000, seed=12345):
    """(centre, scale) that map the noiseless roll to zero mean and unit variance.

    Fixed by a large sample from a fixed seed so every split shares one transform.
    """
    x = spiral(np.random.default_rng(seed).uniform(*SWISSROLL_T, size=n))
    centre = x.mean(axis=0)
    return centre, np.sqrt(((x - centre) ** 2).mean())


def swissroll(n, seed, noise=SWISSROLL_NOISE):
    """n points of the scaled Swiss roll, float32 (n, 2)."""
    rng = np.random.default_rng(seed)
    centre, scale = swissroll_normalisation()
    x = spiral(rng.uniform(*SWISSROLL_T, size=n)) + noise * rng.normal(size=(n, 2))
    return ((x - centre) / scale).astype('float32')


def swissroll_log_density(y, noise=SWISSROLL_NOISE, n_grid=None):
    """Exact log density (nats) of the scaled Swiss roll at points y (n, 2).

    p(x) = integral over t of U(t) N(x; spiral(t), noise^2 I), by the trapezoid rule on
    a grid fine enough to resolve the Gaussian along the spiral; the change of
    variables x = centre + scale y adds 2 log(scale).
    """
    centre, scale = swissroll_normalisation()
    x = np.asarray(y, dtype=np.float64) * scale + centre
    lo, hi = SWISSROLL_T
    if n_grid is None:  # >= 8 grid points per noise width along the fastest part of the arc
        n_grid = int(8 * (hi - lo) * np.sqrt(1 + hi ** 2) / noise) + 1
    t = np.linspace(lo, hi, n_grid)
    w = np.full(n_grid, (hi - lo) / (n_grid - 1))
    w[[0, -1]] /= 2
    log_w = np.log(w / (hi - lo))                     # uniform p(t) times trapezoid weights
    s = spiral(t)
    out = np.empty(len(x))
    for i in range(0, len(x), 64):
        d2 = ((x[i:i + 64, None, :] - s[None]) ** 2).sum(-1)  # (chunk, n_grid)
        out[i:i + 64] = logsumexp(log_w - d2 / (2 * noise ** 2), axis=1)
    return out - np.log(2 * np.pi * noise ** 2) + 2 * np.log(scale)


def heartbeat(n, seed):
    """n binary sequences of 20 bins with a 1 every 5th bin at a random phase, float32."""
    phase = np.random.default_rng(seed).integers(HEARTBEAT_PERIOD, size=n)
    bins = np.arange(HEARTBEAT_LENGTH)
    return ((bins[None, :] - phase[:, None]) % HEARTBEAT_PERIOD == 0).astype('float32')


def heartbeat_log_likelihood_bits():
    """The true log likelihood of every heartbeat sequence: log2(1/5) = -2.322 bits."""
    return -np.log2(HEARTBEAT_PERIOD)
