"""evaluate.py: the stratified bound, the trajectory (importance-weighted) bound, discrete
bits per dimension, the Parzen estimator, resumable evaluation and the report, on tiny
untrained models (the identities hold for any parameters)."""
import json

import numpy as np
import pytest
from scipy.stats import norm

import evaluate as V
import experiments
import model as M
import sampler
import training


def tiny(dataset, **overrides):
    # a thicker roll and a larger b_1 than the defaults keep the Monte Carlo noise small;
    # the schedule is pinned so that these estimator tests do not follow the toy defaults
    base = {'swissroll': dict(T=8, n_hidden=4, n_train=500, n_eval=1000, noise=0.05, beta_1=1e-4,
                              beta_init='geometric', beta_min=1e-6),
            'heartbeat': dict(T=10, n_hidden=8, n_layers=1, n_basis=5, n_train=500, n_eval=200)}[dataset]
    args = experiments.model_args(dataset, 'paper', dict(base, **overrides))
    return experiments.Experiment(dataset, args, seed=0)


@pytest.fixture(scope='module')
def roll():
    exp = tiny('swissroll')
    return exp, V.compile_kl_and_bound(exp)


def test_stratified_steps_use_every_t_nearly_equally():
    steps = V.stratified_steps(37, 5, 8, np.random.default_rng(0))
    assert steps.shape == (5, 37) and steps.min() == 2 and steps.max() == 8
    counts = np.bincount(steps.ravel(), minlength=9)[2:]
    assert counts.max() - counts.min() <= 1
    assert len({tuple(row) for row in steps}) == 5  # not the same steps for every draw


def test_stratified_and_plain_estimators_agree(roll):
    exp, fn = roll
    x = exp.test_x[:300]
    strat = V.heldout_bound(exp, fn, x, n_t=40, seed=1, progress=False)
    plain = exp.heldout_bound(exp.compile_bound(), x, n_draws=40, seed=2)  # t uniform per draw
    se = np.hypot(strat['stderr_bits'], plain['stderr_bits'])
    # the examples are shared, so the spread over examples cancels; 4 sigma is generous
    assert abs(strat['K_bits'] - plain['K_bits']) < 4 * se
    assert strat['K_minus_Lnull_bits'] == pytest.approx(strat['K_bits'] - exp.null_bits)
    # the per-step costs, weighted by how often each t was drawn, average to the KL part of -K
    assert np.average(strat['kl_bits_by_t'], weights=strat['count_by_t']) == pytest.approx(
        strat['edge_bits'] - strat['K_bits'], rel=1e-6)


def test_stderr_shrinks_like_one_over_sqrt_n(roll):
    exp, fn = roll
    small = V.heldout_bound(exp, fn, exp.test_x[:60], n_t=2, progress=False)['stderr_bits']
    large = V.heldout_bound(exp, fn, exp.test_x[:960], n_t=2, progress=False)['stderr_bits']
    assert 2.5 < small / large < 6.4  # sqrt(16) = 4


def test_partial_sums_resume_to_the_same_result(roll, tmp_path):
    exp, fn = roll
    x, partial = exp.test_x[:120], str(tmp_path / 'partial.npz')
    whole = V.heldout_bound(exp, fn, x, n_t=3, seed=4, batch_size=40, progress=False)
    calls = []

    def failing(*inputs):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return fn(*inputs)
    with pytest.raises(KeyboardInterrupt):
        V.heldout_bound(exp, failing, x, n_t=3, seed=4, batch_size=40, partial_path=partial, progress=False)
    assert int(np.load(partial)['units_done']) == 4
    calls.clear()
    resumed = V.heldout_bound(exp, lambda *a: calls.append(1) or fn(*a), x, n_t=3, seed=4, batch_size=40,
                              partial_path=partial, progress=False)
    assert len(calls) == 9 - 4
    assert resumed['K_bits'] == pytest.approx(whole['K_bits'], rel=1e-9)
    assert resumed['kl_bits_by_t'] == pytest.approx(whole['kl_bits_by_t'], rel=1e-9)


@pytest.mark.parametrize('dataset', ['swissroll', 'heartbeat'])
def test_trajectory_estimate_k1_equals_K_in_expectation(dataset):
    """E_q[log w | x^0] over whole forward trajectories = K(x^0) of Eq. 14 plus the exact
    edge correction, example by example, to Monte Carlo precision."""
    exp = tiny(dataset)
    x = exp.test_x[:4]
    n_draws = 3000
    kernel = sampler.compile_reverse_kernel(exp.diffusion, x.ndim)
    beta = np.asarray(exp.beta_values(), np.float64)
    rng = np.random.default_rng(5)
    log_w = V.trajectory_log_weights(exp.diffusion, kernel, beta, np.repeat(x, n_draws, axis=0), rng)
    log_w = log_w.reshape(len(x), n_draws)
    fn = V.compile_kl_and_bound(exp)
    for j in range(len(x)):
        r = V.heldout_bound(exp, fn, x[j:j + 1].repeat(n_draws, axis=0), n_t=1, seed=j, progress=False)
        K_nats = r['K_bits'] * M.LOG2
        expected = K_nats + V.trajectory_minus_eq14_nats(exp.diffusion, beta, x[j:j + 1])[0]
        se = np.hypot(log_w[j].std() / np.sqrt(n_draws), r['stderr_bits'] * M.LOG2)
        assert abs(log_w[j].mean() - expected) < 4.5 * se, (j, log_w[j].mean(), expected, se)


def test_importance_weighted_bound_tightens_K(roll):
    exp, fn = roll
    x = exp.test_x[:100]
    iw = V.importance_weighted_bound(exp, x, ks=(1, 4, 16), seed=0, progress=False)
    K = V.heldout_bound(exp, fn, x, n_t=20, progress=False)
    assert iw['1']['gain_over_k1_bits'] == 0
    assert 0 < iw['4']['gain_over_k1_bits'] < iw['16']['gain_over_k1_bits']
    se = np.hypot(iw['1']['stderr_bits'], K['stderr_bits'])
    assert iw['1']['K_bits'] == pytest.approx(K['K_bits'], abs=4 * se)
    assert iw['16']['K_bits'] > K['K_bits']


def test_log_mean_exp_is_stable():
    a = np.array([[1000.0, 1000.0 + np.log(3)], [-1000.0, -1000.0]])
    np.testing.assert_allclose(V.log_mean_exp(a, axis=1), [1000 + np.log(2), -1000.0])


def test_discrete_bits_per_dim_by_hand():
    # scale 4: levels 4/255 apart in z units; K = 3 bits/pixel, 1 channel:
    # -3 - log2(4/255) = -3 - 2 + log2(255) = 2.99435
    assert V.discrete_nll_bits_per_dim(3.0, 1, 4 / 255, 4 / 255) == pytest.approx(2.994353, abs=1e-6)
    # 3 channels, K = 6 bits/pixel -> 2 bits/dim; width 1/2: -2 + 1 = -1
    assert V.discrete_nll_bits_per_dim(6.0, 3, 0.5, 0.5) == pytest.approx(-1.0)
    assert V.discrete_nll_bits_per_dim(6.0, 3, 0.5, 0.25) is None  # boxes overlap: no bound


def test_parzen_against_direct_computation():
    rng = np.random.default_rng(0)
    samples, x = rng.normal(0, 0.3, (7, 3)), rng.normal(0, 0.3, (5, 3))
    sigma = 0.2
    direct = [np.log(np.mean([norm.pdf(xi, s, sigma).prod() for s in samples])) for xi in x]
    np.testing.assert_allclose(V.parzen_log_likelihood(samples, x, sigma, chunk=2), direct, rtol=1e-10)


def test_parzen_width_chosen_on_validation():
    rng = np.random.default_rng(1)
    samples, valid = rng.normal(0, 0.3, (200, 4)), rng.normal(0, 0.3, (100, 4))
    sigmas = np.logspace(-2, 0.5, 11)
    best, scores = V.choose_parzen_sigma(samples, valid, sigmas)
    direct = {s: np.mean([np.log(np.mean([norm.pdf(v, smp, s).prod() for smp in samples])) for v in valid])
              for s in sigmas}
    assert best == pytest.approx(max(direct, key=direct.get))
    assert sigmas[0] < best < sigmas[-1]  # an interior optimum, not an edge of the grid
    finite = [s for s in sigmas if np.isfinite(direct[s])]  # the direct sum underflows at small widths
    assert len(finite) >= 8 and np.isfinite(list(scores.values())).all()
    assert [scores[float(s)] for s in finite] == pytest.approx([direct[s] for s in finite], rel=1e-9)


def test_entropy_bounds_formulas(roll):
    exp, _ = roll
    r = V.entropy_bounds(exp, exp.test_x[:50], progress=False)
    beta = np.asarray(exp.beta_values(), np.float64)
    A = np.cumprod(1 - beta)
    t = 3  # index t - 2 in the lists
    var_post = beta[t - 1] * (1 - A[t - 2]) / (1 - A[t - 1])  # the posterior variance of q(x^{t-1}|x^t,x^0)
    assert r['lower_nats'][t - 2] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * var_post))
    assert r['upper_nats'][t - 2] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * beta[t - 1]))
    assert len(r['H_p_nats']) == exp.args['T'] - 1
    h, lo, up = (np.array(r[k]) for k in ('H_p_nats', 'lower_nats', 'upper_nats'))
    assert r['n_below_lower'] == (h < lo - 1e-6).sum() and r['n_above_upper'] == (h > up + 1e-6).sum()


def test_report_table_and_command(tmp_path):
    run = tmp_path / 'diffusion_swissroll_x'
    run.mkdir()
    json.dump({'dataset': 'swissroll', 'fidelity': 'paper', 'unit': 'bits', 'K_bits': 1.5,
               'K_minus_Lnull_bits': 5.594, 'stderr_bits': 0.02, 'paper_K_bits': 2.35,
               'paper_K_minus_Lnull_bits': 6.45, 'iterations': 100, 'wall_s': 90.0},
              open(run / 'results.json', 'w'))
    text = V.write_report([str(run)], str(tmp_path / 'REPORT.md'))
    row = [line for line in text.splitlines() if line.startswith('| diffusion_swissroll_x')][0]
    assert '| 1.500 | 0.020 | 5.594 | 2.350 | -0.850 | 6.450 | -0.856 |' in row
    assert '1.5 min' in row and 'cores' in text
    cmd = V.train_command({'dataset': 'swissroll', 'fidelity': 'code',
                           'model_args': {'T': 20, 'expert': 'x y'},
                           'batch_size': 100, 'lr': 0.001, 'optimizer': 'rmsprop', 'seed': 3,
                           'max_batches': 50, 'max_epochs': None, 'max_minutes': None})
    assert cmd == ("python train.py --dataset swissroll --fidelity code --model-args "
                   "'T=20,expert='\"'\"'x y'\"'\"'' --batch-size 100 --lr 0.001 --optimizer rmsprop "
                   "--seed 3 --max-batches 50")


def test_json_flag_prints_the_json_alone_on_stdout(tmp_path, capsys):
    exp = tiny('heartbeat')
    path = str(tmp_path / 'checkpoint.npz')
    args = {'dataset': 'heartbeat', 'fidelity': 'paper', 'model_args': {}, 'seed': 0, 'data_path': None}
    training.save_checkpoint(path, {'shared': {p.name: p.get_value() for p in exp.params},
                                    'status': {'iterations_done': 0}, 'config': {'args': args, 'model': exp.args}})
    V.main([str(tmp_path), '--n-t', '1', '--n-examples', '20', '--json'])
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # nothing else on stdout
    assert out['bound']['n_eval'] == 20 and 'K = ' in captured.err
