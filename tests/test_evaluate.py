"""evaluate.py: the trajectory (importance-weighted) bound, discrete bits per dimension,
the Parzen estimator, the entropy bounds and the command line, on tiny untrained models
(the identities hold for any parameters)."""
import json

import numpy as np
import pytest
from scipy.stats import norm

import bound
import checkpoints
import estimators
import evaluate
import experiments
import presets
import reverse
import util

pytestmark = pytest.mark.slow  # compiles and evaluates small models (python -m pytest -m "not slow" leaves it out)


def tiny(dataset, **overrides):
    # a thicker roll and a larger b_1 than the defaults keep the Monte Carlo noise small;
    # the schedule is pinned so that these estimator tests do not follow the toy defaults
    base = {'swissroll': dict(T=8, n_hidden=4, n_train=500, n_eval=1000, noise=0.05, beta_1=1e-4,
                              beta_init='geometric', beta_min=1e-6),
            'heartbeat': dict(T=10, n_hidden=8, n_layers=1, n_basis=5, n_train=500, n_eval=200)}[dataset]
    args = presets.model_args(dataset, 'paper', dict(base, **overrides))
    return experiments.build(dataset, args, seed=0)


@pytest.fixture(scope='module')
def roll():
    exp = tiny('swissroll')
    return exp, bound.compile_terms(exp)


@pytest.mark.parametrize('dataset', ['swissroll', 'heartbeat'])
def test_trajectory_estimate_k1_equals_K_in_expectation(dataset):
    """E_q[log w | x^0] over whole forward trajectories = K(x^0) of Eq. 14 plus the exact
    edge correction, example by example, to Monte Carlo precision."""
    exp = tiny(dataset)
    x = exp.test_x[:4]
    n_draws = 3000
    kernel = reverse.compile_reverse_kernel(exp.diffusion, x.ndim)
    beta = exp.diffusion.beta_values()
    rng = np.random.default_rng(5)
    log_w = estimators.trajectory_log_weights(exp.diffusion, kernel, beta, np.repeat(x, n_draws, axis=0), rng)
    log_w = log_w.reshape(len(x), n_draws)
    fn = bound.compile_terms(exp)
    for j in range(len(x)):
        r = bound.heldout_bound(exp, x[j:j + 1].repeat(n_draws, axis=0), n_t=1, seed=j, fn=fn)
        K_nats = r['K_bits'] * util.LOG2
        expected = K_nats + exp.diffusion.eq14_correction(beta, x[j:j + 1])[0]
        se = np.hypot(log_w[j].std() / np.sqrt(n_draws), r['stderr_bits'] * util.LOG2)
        assert abs(log_w[j].mean() - expected) < 4.5 * se, (j, log_w[j].mean(), expected, se)


def test_importance_weighted_bound_tightens_K(roll):
    exp, fn = roll
    x = exp.test_x[:100]
    iw = estimators.importance_weighted_bound(exp, x, ks=(1, 4, 16), seed=0, progress=False)
    K = bound.heldout_bound(exp, x, n_t=20, fn=fn)
    assert iw['1']['gain_over_k1_bits'] == 0
    assert 0 < iw['4']['gain_over_k1_bits'] < iw['16']['gain_over_k1_bits']
    se = np.hypot(iw['1']['stderr_bits'], K['stderr_bits'])
    assert iw['1']['K_bits'] == pytest.approx(K['K_bits'], abs=4 * se)
    assert iw['16']['K_bits'] > K['K_bits']


def test_log_mean_exp_is_stable():
    a = np.array([[1000.0, 1000.0 + np.log(3)], [-1000.0, -1000.0]])
    np.testing.assert_allclose(estimators.log_mean_exp(a, axis=1), [1000 + np.log(2), -1000.0])


def test_discrete_bits_per_dim_by_hand():
    # scale 4: levels 4/255 apart in z units; K = 3 bits/pixel, 1 channel:
    # -3 - log2(4/255) = -3 - 2 + log2(255) = 2.99435
    assert estimators.discrete_nll_bits_per_dim(3.0, 1, 4 / 255, 4 / 255) == pytest.approx(2.994353, abs=1e-6)
    # 3 channels, K = 6 bits/pixel -> 2 bits/dim; width 1/2: -2 + 1 = -1
    assert estimators.discrete_nll_bits_per_dim(6.0, 3, 0.5, 0.5) == pytest.approx(-1.0)
    assert estimators.discrete_nll_bits_per_dim(6.0, 3, 0.5, 0.25) is None  # boxes overlap: no bound


def test_parzen_against_direct_computation():
    rng = np.random.default_rng(0)
    samples, x = rng.normal(0, 0.3, (7, 3)), rng.normal(0, 0.3, (5, 3))
    sigma = 0.2
    direct = [np.log(np.mean([norm.pdf(xi, s, sigma).prod() for s in samples])) for xi in x]
    np.testing.assert_allclose(estimators.parzen_log_likelihood(samples, x, sigma, chunk=2), direct, rtol=1e-10)


def test_parzen_width_chosen_on_validation():
    rng = np.random.default_rng(1)
    samples, valid = rng.normal(0, 0.3, (200, 4)), rng.normal(0, 0.3, (100, 4))
    sigmas = np.logspace(-2, 0.5, 11)
    best, scores = estimators.choose_parzen_sigma(samples, valid, sigmas)
    # the mean over validation points of log (1/n sum over samples of the product of the
    # Gaussians' densities), by scipy's density on arrays: (valid, samples, dims)
    direct = {s: np.mean(np.log(np.mean(norm.pdf(valid[:, None], samples[None], s).prod(axis=2), axis=1)))
              for s in sigmas}
    assert best == pytest.approx(max(direct, key=direct.get))
    assert sigmas[0] < best < sigmas[-1]  # an interior optimum, not an edge of the grid
    finite = [s for s in sigmas if np.isfinite(direct[s])]  # the direct sum underflows at small widths
    assert len(finite) >= 8 and np.isfinite(list(scores.values())).all()
    assert [scores[float(s)] for s in finite] == pytest.approx([direct[s] for s in finite], rel=1e-9)


def test_reverse_entropies_and_their_bounds(roll):
    exp, _ = roll
    r = estimators.reverse_entropies(exp, exp.test_x[:50], progress=False)
    beta = np.asarray(exp.diffusion.beta_values(), np.float64)
    A = np.cumprod(1 - beta)
    t = 3  # index t - 2 in the lists
    var_post = beta[t - 1] * (1 - A[t - 2]) / (1 - A[t - 1])  # the posterior variance of q(x^{t-1}|x^t,x^0)
    assert r['lower_nats'][t - 2] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * var_post))
    assert r['upper_nats'][t - 2] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * beta[t - 1]))
    assert len(r['H_p_nats']) == exp.args['T'] - 1
    h, lo, up = (np.array(r[k]) for k in ('H_p_nats', 'lower_nats', 'upper_nats'))
    assert r['n_below_lower'] == (h < lo - 1e-6).sum() and r['n_above_upper'] == (h > up + 1e-6).sum()


def test_json_flag_prints_the_json_alone_on_stdout(tmp_path, capsys):
    exp = tiny('heartbeat')
    path = str(tmp_path / 'checkpoint.npz')
    args = {'dataset': 'heartbeat', 'fidelity': 'paper', 'model_args': {}, 'seed': 0, 'data_path': None}
    checkpoints.save_checkpoint(path, {'shared': {p.name: p.get_value() for p in exp.params},
                                    'status': {'iterations_done': 0}, 'config': {'args': args, 'model': exp.args}})
    evaluate.main([str(tmp_path), '--n-t', '1', '--n-examples', '20', '--json'])
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # nothing else on stdout
    assert out['bound']['n_eval'] == 20 and 'K = ' in captured.err
