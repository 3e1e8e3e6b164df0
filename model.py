"""The diffusion math (paper Sec. 2 and Appendix B): the forward process (Eqs. 1-4: the
stationary pi, the kernel q(x^t | x^{t-1}) and its schedule, q(x^t | x^0), p(x^T) = pi), the
posterior q(x^{t-1} | x^t, x^0), the reverse-kernel read-out, and the lower bound
K of Eq. 14, for Gaussian and binomial diffusion; and, with the same methods for both
families, the numpy side that sampling and evaluation use (schedule values, forward
sample and step, stationary density, prior, reverse-step sample and density).

Time steps t run 1..T; arrays over t are indexed t - 1. Symbolic x^0 has shape
(n, D) or (n, C, H, W); t is an int vector (n,) of steps in 2..T.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import numpy as np
import theano
import theano.tensor as T

import util
from regression import Layer
from util import logit

floatX = theano.config.floatX
BETA_MIN = 1e-6  # released code: smallest b_t
CODE_BETA_1_INCREMENT = 0.001  # released code: added to the floor of b_1 (its step1_beta)


def per_example(v):
    """Sum over every axis but the first."""
    return v.flatten(2).sum(axis=1)


def bcast(v, x):
    """A per-example vector (n,) shaped to broadcast against x."""
    return v.dimshuffle([0] + ['x'] * (x.ndim - 1))


# ---------------------------------------------------------------- Gaussian diffusion

def harmonic_beta(T_steps):
    """The released code's baseline schedule: b_t = 1 / n_t with n_t running linearly
    from T down to 2, so roughly 1 / (T - t + 1) (erase a constant fraction of the
    remaining signal) but ending at b_T = 1/2, which leaves A_T about 1/T."""
    return 1.0 / np.linspace(T_steps, 2.0, T_steps)


def geometric_beta(T_steps, beta_1, A_T=1e-3):
    """b_t with the accumulated noise 1 - A_t growing geometrically from b_1 to 1 - A_T
    (our choice of starting point for a learned schedule; fine data need small steps
    first, and T = 40 is too few for the harmonic one)."""
    noise = beta_1 * ((1 - A_T) / beta_1) ** (np.arange(T_steps) / (T_steps - 1.0))
    A = 1 - noise
    return 1 - A / np.concatenate([[1.0], A[:-1]])


def logit_beta(T_steps, beta_1, A_T=1e-3):
    """b_t with the log-odds of the accumulated noise, logit(1 - A_t), evenly spaced from
    logit(b_1) to logit(1 - A_T): a starting point for the schedule learned by gradient
    ascent on K (Sec. 2.4.1), which the paper does not give (our choice). Geometric in
    the noise at the start, like geometric_beta, and geometric in the signal A_t at the
    end, so that the last steps stay moderate (geometric_beta ends with b_T near 1, whose reverse from N(0, I) must
    produce a still structured x^{T-1} in one Gaussian step)."""
    u = np.linspace(logit(beta_1), logit(1 - A_T), T_steps)
    noise = 1 / (1 + np.exp(-u))  # 1 - A_t
    prev = np.concatenate([[0.0], noise[:-1]])
    return (noise - prev) / (1 - prev)  # b_t = 1 - A_t / A_{t-1}


class ForwardSchedule(Layer):
    """b_t of the forward kernel q(x^t | x^{t-1}) = N(x^{t-1} sqrt(1 - b_t), b_t I) (Eq. 2,
    Table App.1).

    b_t = m_t + sigmoid(logit(base_t) + sum_j c_j g_j(t)) (1 - m_t - 1e-5)
    (the released code's parameterisation: docs/paper_and_code.md, section 3, item 1), with
    the floor m_t = m
    (the code's 1e-6 unless `beta_min` says otherwise).
    learn=True (paper, Sec. 2.4.1): c_j are trained by gradient ascent on K and b_1 is
        fixed to `beta_1`.
    learn=False (code): c_j = 0, and the floor at t = 1 is raised by 0.001, m_1 = m + 0.001,
        as in the released code (which also narrows the sigmoid's range at t = 1).
    """

    def __init__(self, base, basis, learn, beta_1=None, beta_min=BETA_MIN):
        super().__init__('schedule')
        self.learn, self.beta_1, self.beta_min = learn, beta_1, beta_min
        self.base = logit(np.clip(base, 1e-12, 1 - 1e-12)).astype(floatX)
        self.g = basis
        self.c = self.param('c', np.zeros(basis.shape[0])) if learn else None
        floor = np.full(len(base), float(beta_min))
        if not learn:
            floor[0] += CODE_BETA_1_INCREMENT
        self.floor, self.range = floor.astype(floatX), (1 - floor - 1e-5).astype(floatX)

    def beta(self):
        """Symbolic (T,) vector b_1..b_T."""
        z = self.base + T.dot(self.c, self.g) if self.learn else T.as_tensor_variable(self.base)
        beta = self.floor + T.nnet.sigmoid(z) * self.range
        return T.set_subtensor(beta[0], self.beta_1) if self.learn else beta


def alpha_bar(beta):
    """A_t = prod_{s<=t} (1 - b_s), by a cumulative sum of logs."""
    return T.exp(T.extra_ops.cumsum(T.log1p(-beta)))


def noise_variance(beta):
    """1 - A_t, the variance of q(x^t | x^0) (Sec. 2.1), without cancellation:
    -expm1(sum log(1 - b_s)). In float32, 1 - A_t itself is off by up to 50% when the
    noise is ~1e-7 (the Swiss roll's first steps)."""
    return -T.expm1(T.extra_ops.cumsum(T.log1p(-beta)))


def q_sample(x0, A_t, noise_var, noise):
    """x^t ~ q(x^t | x^0) = N(sqrt(A_t) x^0, (1 - A_t) I), reparameterised by `noise`;
    noise_var = 1 - A_t (noise_variance)."""
    return T.sqrt(A_t) * x0 + T.sqrt(noise_var) * noise


def q_posterior(x0, xt, A_prev, noise_var_prev, beta_t):
    """Mean and variance of q(x^{t-1} | x^t, x^0) (Appendix B): the product of
    N(sqrt(A_{t-1}) x^0, 1 - A_{t-1}) and N(x^t / sqrt(a_t), b_t / a_t);
    noise_var_prev = 1 - A_{t-1} (noise_variance)."""
    a_t = 1 - beta_t
    v1, v2 = noise_var_prev, beta_t / a_t
    lam = 1 / v1 + 1 / v2
    mu = (T.sqrt(A_prev) * x0 / v1 + xt / (T.sqrt(a_t) * v2)) / lam
    return mu, 1 / lam


def kl_gaussian(mu_q, var_q, mu_p, var_p):
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per dimension, in nats."""
    return 0.5 * (T.log(var_p / var_q) + (var_q + T.sqr(mu_q - mu_p)) / var_p - 1)


def gaussian_entropy(var):
    """Differential entropy of N(., var), per dimension, in nats."""
    return 0.5 * (1 + T.log(2 * np.pi * var))


def readout_sigma(z_sigma, beta_t, T_steps, code):
    """Sigma of p(x^{t-1} | x^t). Paper Eq. 64: sigmoid(z + logit(b_t)).
    code=True: the released code divides z by sqrt(T) first."""
    scale = 1.0 / np.sqrt(T_steps) if code else 1.0
    return T.nnet.sigmoid(z_sigma * np.float32(scale) + logit(beta_t, T))


def readout_mu(xt, z_mu, sigma, beta_t, code):
    """Mean of p(x^{t-1} | x^t). Paper Eq. 65: (x^t - z)(1 - Sigma) + z.
    code=True: the released code's x^t sqrt(1 - b_t) + z sqrt(b_t)."""
    if code:
        return xt * T.sqrt(1 - beta_t) + z_mu * T.sqrt(beta_t)
    return (xt - z_mu) * (1 - sigma) + z_mu


class Diffusion:
    """The bound K of Eq. 14 as Gaussian and binomial diffusion share it, from each family's
    kl_and_outputs (the KL of one step at x^t ~ q(x^t | x^0), drawn by the family's
    draw_noise) and edge_entropies (the entropy terms of Eq. 14)."""

    def kl_term(self, x0, t, noise):
        """KL(q(x^{t-1} | x^t, x^0) || p(x^{t-1} | x^t)) summed over dimensions, (n,), nats,
        at x^t drawn from q(x^t | x^0) by `noise` (Gaussian: reparameterised; binomial: uniform)."""
        return self.kl_and_outputs(x0, t, noise)[0]

    def bound_K(self, x0, t, noise, weight=None):
        """Monte Carlo estimate of K (Eq. 14) per example, nats: one t ~ U{2..T} per example,
        the KL sample multiplied by (T - 1) (paper) or T (released code's Gaussian); with
        `weight` (n,), t was drawn from a proposal q and each KL is also multiplied by
        1 / ((T - 1) q(t)) (bound.ProposalSteps)."""
        kl = self.kl_term(x0, t, noise) if weight is None else weight * self.kl_term(x0, t, noise)
        return -self.kl_multiplier * kl + self.edge_entropies(x0)

    def draw_t(self, rng, n):
        """n steps t uniform in 2..T."""
        return rng.integers(2, self.T_steps + 1, size=n).astype('int64')


class GaussianDiffusion(Diffusion):
    """Gaussian diffusion with a learned reverse kernel (paper section 2).

    net(xt, t) returns (z_mu, z_sigma), each shaped like xt.
    options: base (b_t before learning), learn_beta, beta_1, beta_min (ForwardSchedule);
    code_mu, code_sigma (read-out); kl_factor 'T-1' (paper) or 'T' (released code): the KL
    sample's multiplier, kl_multiplier, is then T - 1 or T.
    """

    def __init__(self, net, T_steps, basis, base, learn_beta=True, beta_1=1e-5,
                 code_mu=False, code_sigma=False, kl_factor='T-1', beta_min=BETA_MIN):
        self.net, self.T_steps = net, T_steps
        self.schedule = ForwardSchedule(base, basis, learn_beta, beta_1, beta_min)
        self.code_mu, self.code_sigma = code_mu, code_sigma
        self.kl_multiplier = T_steps - 1 if kl_factor == 'T-1' else T_steps
        self.params = self.schedule.params + net.params
        self._beta_fn = None  # compiled on first use by beta_values

    def reverse_kernel(self, xt, t, beta=None):
        """mu, Sigma of p(x^{t-1} | x^t), t (n,) in 1..T (Eq. 64-65 or the code's form)."""
        return self.read_out(xt, t, self.net(xt, t), beta)

    def read_out(self, xt, t, z, beta=None):
        """mu, Sigma of p(x^{t-1} | x^t) from the network's outputs z = (z_mu, z_Sigma)
        (Eq. 64-65 or the code's form)."""
        beta = self.schedule.beta() if beta is None else beta
        beta_t = bcast(beta[t - 1], xt)
        z_mu, z_sigma = z
        sigma = readout_sigma(z_sigma, beta_t, self.T_steps, self.code_sigma)
        return readout_mu(xt, z_mu, sigma, beta_t, self.code_mu), sigma

    def kl_and_outputs(self, x0, t, noise):
        """kl_term, and the network's outputs z it was read out from (a tuple)."""
        beta = self.schedule.beta()
        A, N = alpha_bar(beta), noise_variance(beta)
        xt = q_sample(x0, bcast(A[t - 1], x0), bcast(N[t - 1], x0), noise)
        mu_q, var_q = q_posterior(x0, xt, bcast(A[t - 2], x0), bcast(N[t - 2], x0), bcast(beta[t - 1], x0))
        z = tuple(self.net(xt, t))
        mu_p, var_p = self.read_out(xt, t, z, beta)
        return per_example(kl_gaussian(mu_q, var_q, mu_p, var_p)), z

    def edge_entropies(self, x0):
        """H_q(X^T|X^0) - H_q(X^1|X^0) - H_p(X^T) of Eq. 14 (Appendix B.2), all dimensions,
        nats, one value per example of x0 (the same for all: the Gaussian entropies do not
        depend on x^0)."""
        beta = self.schedule.beta()
        A_T = alpha_bar(beta)[-1]
        per_dim = gaussian_entropy(1 - A_T) - gaussian_entropy(beta[0]) - gaussian_entropy(1.0)
        n_dims = T.cast(T.prod(x0.shape[1:]), floatX)  # an int64 count would make K float64
        return T.alloc(n_dims * per_dim, x0.shape[0])

    def draw_noise(self, rng, x0):
        """The noise input of bound_K for a minibatch x0 (numpy)."""
        return rng.standard_normal(x0.shape).astype(floatX)

    # numpy side, shared with BinomialDiffusion: sampler.py, evaluate.py and figures.py use
    # these without asking which family they hold. Reverse-kernel parameters are the
    # tuple a compiled reverse_kernel returns: (mu, Sigma) here, (f_b,) for binomial.

    def beta_values(self):
        """b_1..b_T now (the learned schedule's current values), float64."""
        if self._beta_fn is None:
            self._beta_fn = theano.function([], self.schedule.beta())
        return np.asarray(self._beta_fn(), np.float64)

    def forward_sample(self, x0, t, rng, beta):
        """x^t ~ q(x^t | x^0) = N(sqrt(A_t) x^0, (1 - A_t) I), the forward trajectory (Eq. 3)
        marginalised; t in 0..T, one for all rows or one per row; beta = beta_values()."""
        log_A = per_row(log_alpha_bar(beta)[t], x0)
        return np.exp(0.5 * log_A) * x0 + np.sqrt(-np.expm1(log_A)) * rng.standard_normal(x0.shape)

    def forward_step(self, x_prev, t, rng, beta):
        """(x^t ~ q(x^t | x^{t-1}) = N(sqrt(1 - b_t) x^{t-1}, b_t I) (Eq. 2), log q(x^t | x^{t-1})
        per row)."""
        mean = np.sqrt(1 - beta[t - 1]) * x_prev
        xt = mean + np.sqrt(beta[t - 1]) * rng.standard_normal(x_prev.shape)
        return xt, log_normal(xt, mean, beta[t - 1])

    def log_stationary(self, x):
        """log pi(x) per row: the stationary distribution N(0, I) of the forward kernel (Eq. 1),
        which is p(x^T) (Eq. 4)."""
        return log_normal(x, 0.0, 1.0)

    def prior_params(self, shape):
        """Parameters of p(x^T) = pi(x^T) = N(0, I) (Eq. 4)."""
        return np.zeros(shape, floatX), np.ones(shape, floatX)

    def sample(self, params, rng):
        """A draw from N(mu, Sigma), params = (mu, Sigma)."""
        mu, var = params
        return (mu + np.sqrt(var) * rng.standard_normal(mu.shape)).astype(floatX)

    def log_prob(self, x, params):
        """log N(x; mu, Sigma) per row, params = (mu, Sigma)."""
        return log_normal(x, params[0].astype(np.float64), params[1].astype(np.float64))

    def entropy_bounds(self, beta):
        """(lower, upper) bounds of Eq. 24 on the reverse step's entropy per dimension, nats,
        at t = 2..T: H_q(X^t|X^{t-1}) + H_q(X^{t-1}|X^0) - H_q(X^t|X^0)
        = 0.5 log(2 pi e b_t (1 - A_{t-1}) / (1 - A_t)), and H_q(X^t|X^{t-1}) = 0.5 log(2 pi e b_t)
        (the upper bound needs unit-variance data; Sec. 2.6)."""
        noise = -np.expm1(log_alpha_bar(beta))  # 1 - A_t, t = 0..T
        b = beta[1:]
        return (0.5 * np.log(2 * np.pi * np.e * b * noise[1:-1] / noise[2:]),
                0.5 * np.log(2 * np.pi * np.e * b))

    def eq14_correction(self, beta, x0):
        """E_q[log w | x^0] - K(x^0) per row, nats: the exact terms Eq. 14 replaces by their
        averages over unit-variance data (Appendix B.1-B.2): -0.5 (A_T + b_1)(|x^0|^2 - D)."""
        x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
        return -0.5 * (np.prod(1 - beta) + beta[0]) * (np.square(x0).sum(axis=1) - x0.shape[1])


def log_alpha_bar(beta):
    """log A_t for t = 0..T (A_0 = 1), from numpy b_1..b_T."""
    return np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(beta, np.float64)))])


def per_row(v, x):
    """A scalar, or a vector with one value per row of x, shaped to broadcast against x."""
    v = np.asarray(v)
    return v.reshape((-1,) + (1,) * (x.ndim - 1)) if v.ndim else v


def log_normal(x, mu, var):
    """log N(x; mu, var) summed over every axis but the first, nats (numpy)."""
    return (-0.5 * (np.log(2 * np.pi) + np.log(var) + np.square(x - mu) / var)).reshape(len(x), -1).sum(axis=1)


def log_bernoulli(x, prob):
    """log Bern(x; prob) summed over every axis but the first, nats (numpy)."""
    prob = np.clip(prob, 1e-7, 1 - 1e-7)
    return (x * np.log(prob) + (1 - x) * np.log1p(-prob)).reshape(len(x), -1).sum(axis=1)


# ---------------------------------------------------------------- binomial diffusion

def bernoulli_kl(q, p, lib=T):
    """KL(Bern(q) || Bern(p)), nats; lib=numpy for arrays."""
    return q * (lib.log(q) - lib.log(p)) + (1 - q) * (lib.log1p(-q) - lib.log1p(-p))


def bernoulli_entropy(p, lib=T):
    """H(Bern(p)), nats; p may be 0 or 1; lib=numpy for arrays."""
    eps = 1e-12
    return -(p * lib.log(p + eps) + (1 - p) * lib.log(1 - p + eps))


class BinomialDiffusion(Diffusion):
    """Binomial diffusion toward Bern(p) (paper section 2, Table App.1).

    q(x^t | x^{t-1}) = Bern(x^{t-1} (1 - b_t) + p b_t), b_t = 1 / (T - t + 1),
    so A_t = prod (1 - b_s) = (T - t) / T and x^T ~ Bern(p) exactly.
    net(xt, t) returns logits z, read out by reverse_kernel.
    """

    def __init__(self, net, T_steps, p=0.2):
        self.net, self.T_steps, self.p = net, T_steps, p
        t = np.arange(1, T_steps + 1)
        self.beta_np = 1.0 / (T_steps - t + 1)
        self.A_np = np.cumprod(1 - self.beta_np)
        self.kl_multiplier = T_steps - 1
        self.params = net.params

    def marginal(self, x0, A):
        """P(x^t = 1 | x^0) = x^0 A_t + p (1 - A_t)."""
        return x0 * A + self.p * (1 - A)

    def q_posterior(self, x0, xt, A_prev, beta_t):
        """P(x^{t-1} = 1 | x^t, x^0) by Bayes' rule over the two values of x^{t-1}."""
        prior1 = self.marginal(x0, A_prev)
        lik1 = xt * (1 - beta_t + self.p * beta_t) + (1 - xt) * (beta_t - self.p * beta_t)
        lik0 = xt * (self.p * beta_t) + (1 - xt) * (1 - self.p * beta_t)
        return prior1 * lik1 / (prior1 * lik1 + (1 - prior1) * lik0)

    def reverse_kernel(self, xt, t):
        """(f_b,): f_b(x^t, t) = P(x^{t-1} = 1 | x^t) = sigmoid(z + logit(x^t (1 - b_t) + p b_t)).

        The offset (our choice; the paper gives no binomial read-out) is the exact
        time reversal of one forward step under the stationary Bern(p), so an
        untrained network starts at a sensible kernel, as Eq. 64 does with logit(b_t).
        """
        return self.read_out(xt, t, (self.net(xt, t),))

    def read_out(self, xt, t, z):
        """(f_b,) from the network's output z = (z,) (reverse_kernel)."""
        beta_t = bcast(T.constant(self.beta_np.astype(floatX))[t - 1], xt)
        stay = T.clip(xt * (1 - beta_t) + self.p * beta_t, 1e-6, 1 - 1e-6)
        return (T.nnet.sigmoid(z[0] + logit(stay, T)),)

    def kl_and_outputs(self, x0, t, uniform):
        """kl_term, and the network's output z it was read out from (a tuple)."""
        A = T.constant(self.A_np.astype(floatX))
        beta = T.constant(self.beta_np.astype(floatX))
        xt = T.cast(T.lt(uniform, self.marginal(x0, bcast(A[t - 1], x0))), floatX)
        q = self.q_posterior(x0, xt, bcast(A[t - 2], x0), bcast(beta[t - 1], x0))
        z = (self.net(xt, t),)
        f = T.clip(self.read_out(xt, t, z)[0], 1e-7, 1 - 1e-7)
        return per_example(bernoulli_kl(T.clip(q, 1e-12, 1 - 1e-12), f)), z

    def edge_entropies(self, x0):
        """H_q(X^T|X^0) - H_q(X^1|X^0) - H_p(X^T) of Eq. 14 with Bernoulli entropies, nats, per
        example: -H_q(X^1|X^0), since A_T = 0 makes H_q(X^T|X^0) = H_p(X^T) = H(p)."""
        b_1 = self.beta_np[0]
        keep, drift = np.asarray([1 - b_1, self.p * b_1], dtype=floatX)  # float64 scalars would make K float64
        return -per_example(bernoulli_entropy(x0 * keep + drift))

    def factorised_optimum_bits(self, patterns, n=1000, seed=0):
        """K (bits per sequence) of the best reverse kernel that is Bernoulli independently
        per bit (the form of f_b), for data uniform over the rows of `patterns` (numpy).

        K as in Eq. 14 with Bernoulli terms (bound_K). At each t the best such kernel is
        f*_i(x^t) = E[q(x^{t-1}_i = 1 | x^t, x^0) | x^t], the posterior over patterns
        given x^t averaging q; its KL is estimated from n draws of (x^0, x^t) per step.
        A reference for a trained network (docs/paper_and_code.md, section 5: about -2.37
        bits for the heartbeat), not a bound of the data.
        """
        rng = np.random.default_rng(seed)
        patterns = np.asarray(patterns, dtype=np.float64)
        kl_sum = 0.0
        for t in range(2, self.T_steps + 1):
            A_t, A_prev, beta_t = self.A_np[t - 1], self.A_np[t - 2], self.beta_np[t - 1]
            x0 = patterns[rng.integers(len(patterns), size=n)]
            xt = (rng.random(x0.shape) < self.marginal(x0, A_t)).astype(float)
            m = self.marginal(patterns[None], A_t)  # (1, K, D): P(x^t_i = 1 | pattern)
            loglik = (xt[:, None] * np.log(m) + (1 - xt[:, None]) * np.log(1 - m)).sum(-1)
            w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            f = (w[:, :, None] * self.q_posterior(patterns[None], xt[:, None], A_prev, beta_t)).sum(1)
            q = self.q_posterior(x0, xt, A_prev, beta_t)
            kl_sum += np.mean(np.sum(bernoulli_kl(np.clip(q, 1e-12, 1 - 1e-12), np.clip(f, 1e-12, 1 - 1e-12), np), 1))
        b_1 = self.beta_np[0]
        h1 = bernoulli_entropy(patterns * (1 - b_1) + self.p * b_1, np).sum(1).mean()
        return float(-(kl_sum + h1) / util.LOG2)

    def draw_noise(self, rng, x0):
        """The uniform input of bound_K that draws x^t (numpy)."""
        return rng.random(x0.shape).astype(floatX)

    # numpy side: the same methods as GaussianDiffusion's; parameters are (f_b,)

    def beta_values(self):
        return self.beta_np

    def forward_sample(self, x0, t, rng, beta):
        """x^t ~ q(x^t | x^0) = Bern(x^0 A_t + p (1 - A_t)), the forward trajectory (Eq. 3)
        marginalised; t in 0..T, one or one per row."""
        A_t = per_row(np.exp(log_alpha_bar(beta))[t], x0)
        return (rng.random(x0.shape) < self.marginal(x0, A_t)).astype(floatX)

    def forward_step(self, x_prev, t, rng, beta):
        """(x^t ~ q(x^t | x^{t-1}) = Bern(x^{t-1} (1 - b_t) + p b_t) (Eq. 2, Table App.1),
        log q(x^t | x^{t-1}) per row)."""
        prob = x_prev * (1 - beta[t - 1]) + self.p * beta[t - 1]
        xt = (rng.random(x_prev.shape) < prob).astype(np.float64)
        return xt, log_bernoulli(xt, prob)

    def log_stationary(self, x):
        """log pi(x) per row: the stationary Bern(p) of the forward kernel (Eq. 1), which is
        p(x^T) (Eq. 4)."""
        return log_bernoulli(x, np.full(x.shape, self.p))

    def prior_params(self, shape):
        """Parameters of p(x^T) = pi(x^T) = Bern(p) (Eq. 4)."""
        return (np.full(shape, self.p, dtype=floatX),)

    def sample(self, params, rng):
        """A draw from Bern(f_b), params = (f_b,)."""
        return (rng.random(params[0].shape) < params[0]).astype(floatX)

    def log_prob(self, x, params):
        return log_bernoulli(x, params[0])

    def entropy_bounds(self, beta):
        raise ValueError('the entropy bounds of Eq. 24 are for Gaussian diffusion')

    def eq14_correction(self, beta, x0):
        """E_q[log w | x^0] - K(x^0) per row, nats: b_1 logit(p) sum_d (x^0_d - p), which
        vanishes on average over data of mean p (Appendix B.1-B.2)."""
        x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
        return beta[0] * logit(self.p) * (x0 - self.p).sum(axis=1)

    def null_bits(self, n_dims):
        """L_null for binary data: the log likelihood under Bern(p), n_dims H(p) bits (Table 1)."""
        h = -(self.p * np.log2(self.p) + (1 - self.p) * np.log2(1 - self.p))
        return -n_dims * h
