"""The diffusion math of model.py against brute force (paper Sec. 2 and Appendix B)."""
import itertools

import numpy as np
import pytest
import theano
import theano.tensor as T

import model as M
import regression as R

pytestmark = pytest.mark.slow  # compiles the diffusion math and trains small models (python -m pytest -m "not slow" leaves it out)

f32 = 'float32'


def evaluate(expr, **inputs):
    return theano.function(list(inputs), expr, on_unused_input='ignore')(*inputs.values())


def test_q_posterior_matches_brute_force_product_of_gaussians():
    x0, xt, A_prev, beta_t = 0.7, -0.3, 0.6, 0.05
    mu, var = M.q_posterior(T.constant(x0), T.constant(xt), T.constant(A_prev), T.constant(1 - A_prev),
                            T.constant(beta_t))
    mu, var = float(mu.eval()), float(var.eval())
    grid = np.linspace(-6, 6, 200001)
    prior = np.exp(-(grid - np.sqrt(A_prev) * x0) ** 2 / (2 * (1 - A_prev)))
    lik = np.exp(-(xt - np.sqrt(1 - beta_t) * grid) ** 2 / (2 * beta_t))  # q(x^t | x^{t-1})
    post = prior * lik / np.trapz(prior * lik, grid)
    mean = np.trapz(grid * post, grid)
    assert mu == pytest.approx(mean, abs=1e-6)
    assert var == pytest.approx(np.trapz((grid - mean) ** 2 * post, grid), rel=1e-5)


def test_gaussian_kl_matches_monte_carlo():
    mq, vq, mp, vp = 0.3, 0.5, -0.2, 1.7
    kl = float(M.kl_gaussian(*map(T.constant, (mq, vq, mp, vp))).eval())
    x = np.random.default_rng(0).normal(mq, np.sqrt(vq), 2_000_000)
    log_q = -0.5 * np.log(2 * np.pi * vq) - (x - mq) ** 2 / (2 * vq)
    log_p = -0.5 * np.log(2 * np.pi * vp) - (x - mp) ** 2 / (2 * vp)
    assert kl == pytest.approx(np.mean(log_q - log_p), abs=3e-3)


class ExactReverse(R.Layer):
    """Read-out values that make Eq. 64-65 give the exact reverse kernel of the
    variance-preserving chain on N(0, I) data: p(x^{t-1}|x^t) = N(sqrt(1-b_t) x^t, b_t)."""

    def __init__(self):
        super().__init__('exact')
        self.beta = None  # set once the schedule exists

    def __call__(self, xt, t):
        b = M.bcast(self.beta[t - 1], xt)
        # Sigma = sigmoid(z_s + logit(b)) = b needs z_s = 0; mu = (x - z)(1 - b) + z = sqrt(1-b) x
        z_mu = xt * (T.sqrt(1 - b) - (1 - b)) / b
        return z_mu, T.zeros_like(xt)


def test_bound_is_exact_for_standard_normal_data_and_exact_reverse_kernel():
    T_steps, D, n = 20, 3, 100000
    base = M.harmonic_beta(T_steps)
    basis = R.temporal_basis(T_steps, 5, 'paper')
    net = ExactReverse()
    dif = M.GaussianDiffusion(net, T_steps, basis, base, learn_beta=False, code_mu=False,
                              code_sigma=False, kl_factor='T-1')
    net.beta = dif.schedule.beta()
    x0, t, noise = T.matrix('x0'), T.lvector('t'), T.matrix('noise')
    fn = theano.function([x0, t, noise], dif.bound_K(x0, t, noise))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, D)).astype(f32)
    k_bits = fn(x, dif.draw_t(rng, n), rng.standard_normal((n, D)).astype(f32)) / np.log(2) / D
    stderr = k_bits.std() / np.sqrt(n)
    true_ll = -0.5 * np.log2(2 * np.pi * np.e)  # -2.047 bits per dimension
    assert abs(k_bits.mean() - true_ll) < 3 * stderr + 1e-3
    assert stderr < 0.012


def test_bernoulli_posterior_matches_enumeration():
    p, beta_t, A_prev = 0.2, 0.1, 0.7
    dif = M.BinomialDiffusion(R.Layer('none'), 10, p)
    for x0, xt in itertools.product([0.0, 1.0], repeat=2):
        q = float(dif.q_posterior(T.constant(x0), T.constant(xt), T.constant(A_prev),
                                  T.constant(beta_t)).eval())
        joint = {}
        for prev in (0, 1):
            prior = x0 * A_prev + p * (1 - A_prev)
            p_prev = prior if prev else 1 - prior
            step = prev * (1 - beta_t) + p * beta_t  # P(x^t = 1 | x^{t-1})
            joint[prev] = p_prev * (step if xt else 1 - step)
        assert q == pytest.approx(joint[1] / (joint[0] + joint[1]), rel=1e-6)


def test_binomial_readout_offset_is_one_reversed_step():
    """With z = 0 the kernel is x^t (1 - b_t) + p b_t (the read-out's offset)."""
    T_steps, p = 2000, 0.2
    dif = M.BinomialDiffusion(ZeroNet(), T_steps, p)
    xt, t = T.matrix('xt'), T.lvector('t')
    kernel = theano.function([xt, t], dif.reverse_kernel(xt, t)[0])
    steps = np.array([1, 2, 10, 700, 1999, 2000])
    beta = dif.beta_np[steps - 1]
    for x in (0.0, 1.0):
        f = kernel(np.full((len(steps), 1), x, np.float32), steps)[:, 0].astype(np.float64)
        want = x * (1 - beta) + p * beta
        np.testing.assert_allclose(np.minimum(f, 1 - f), np.minimum(want, 1 - want), rtol=1e-3, atol=1e-7)


def test_factorised_optimum_is_a_bound_and_exact_for_one_pattern():
    dif = M.BinomialDiffusion(ZeroNet(), 100, 0.2)
    single = np.array([[1.0, 0.0, 0.0, 1.0]])
    k_single = dif.factorised_optimum_bits(single, n=50)
    # one pattern: the posterior over patterns is certain, f* = q, every KL is 0, K = -H_q(X^1|X^0)
    b_1 = dif.beta_np[0]
    m = single * (1 - b_1) + 0.2 * b_1
    want = np.sum(m * np.log2(m) + (1 - m) * np.log2(1 - m))
    assert k_single == pytest.approx(want, rel=1e-9)
    # five heartbeat-like patterns: below the truth log2(1/5), above L_null (bits independent)
    patterns = np.eye(5)[:, np.arange(10) % 5]
    k = dif.factorised_optimum_bits(patterns, n=400)
    assert -10 * 0.722 < k < np.log2(1 / 5)


class ZeroNet:
    params = []

    def __call__(self, xt, t):
        return T.zeros_like(xt)


def test_learned_schedule_keeps_beta_1_and_moves_the_rest():
    T_steps = 12
    basis = R.temporal_basis(T_steps, 4, 'paper')
    sched = M.ForwardSchedule(M.geometric_beta(T_steps, 1e-4), basis, learn=True, beta_1=1e-4)
    beta = sched.beta()
    before = beta.eval()
    grad = T.grad(T.sum(T.log(beta) * np.arange(1, T_steps + 1)), sched.c)
    step = theano.function([], [], updates=[(sched.c, sched.c + 0.5 * grad)])
    for _ in range(5):
        step()
    after = beta.eval()
    assert after[0] == pytest.approx(1e-4, rel=1e-6) and before[0] == pytest.approx(1e-4, rel=1e-6)
    assert np.all(np.abs(after[1:] - before[1:]) > 1e-7)


def test_noise_variance_keeps_float32_precision_at_tiny_steps():
    """1 - A_t at the Swiss roll's first steps (1e-7): computed as 1 - A_t in float32 it is
    off by tens of percent (which biased K upward by 0.26 bits), noise_variance is not."""
    beta64 = M.logit_beta(40, 1e-7)
    want = -np.expm1(np.cumsum(np.log1p(-beta64)))
    beta = T.constant(beta64.astype(np.float32))
    exact = M.noise_variance(beta).eval()
    naive = (1 - M.alpha_bar(beta)).eval()
    assert exact.dtype == np.float32
    np.testing.assert_allclose(exact, want, rtol=1e-5)
    assert np.max(np.abs(naive[:3] / want[:3] - 1)) > 0.1


def test_logit_schedule_starts_at_beta_1_and_ends_moderately():
    beta = M.logit_beta(40, 1e-7)
    A = np.cumprod(1 - beta)
    assert beta[0] == pytest.approx(1e-7) and A[-1] == pytest.approx(1e-3)
    assert np.all(beta[-5:] < 0.5) and M.geometric_beta(40, 1e-7)[-1] > 0.99
    u = np.log(1 - A) - np.log(A)  # logit of the accumulated noise: evenly spaced
    np.testing.assert_allclose(np.diff(u), np.diff(u).mean(), rtol=1e-6)


def test_fixed_schedule_is_the_released_codes():
    T_steps = 1000
    sched = M.ForwardSchedule(M.harmonic_beta(T_steps), R.temporal_basis(T_steps, 10, 'code'),
                              learn=False)
    beta = sched.beta().eval()
    floor_1 = 1e-6 + 0.001  # the released code raises the floor of b_1 (and so narrows the range)
    assert beta[0] == pytest.approx(floor_1 + (1 / 1000) * (1 - floor_1 - 1e-5), rel=1e-6)
    assert beta[1] == pytest.approx(1e-6 + (1 / 999) * (1 - 1e-6 - 1e-5), rel=1e-6)
    A_T = np.prod(1 - beta.astype(np.float64))
    assert 1e-4 < A_T < 1e-2  # the released code's A_T: about 1e-3
    assert sched.params == []


def test_temporal_basis_sums_to_one_and_width_differs():
    paper = R.temporal_basis(100, 10, 'paper')
    code = R.temporal_basis(100, 10, 'code')
    np.testing.assert_allclose(paper.sum(0), 1, rtol=1e-5)
    np.testing.assert_allclose(code.sum(0), 1, rtol=1e-5)
    assert paper.max() < code.max()  # wider bumps overlap more
