"""bound.py: the one held-out estimator of K (Eq. 14), on tiny untrained models."""
import numpy as np
import pytest
import theano

import bound
import checkpoints
import experiments
import presets

pytestmark = pytest.mark.slow  # compiles the bound of small models (python -m pytest -m "not slow" leaves it out)


def roll_experiment(fidelity='paper', **overrides):
    # a thicker roll and a larger b_1 than the defaults keep the Monte Carlo noise small
    args = presets.model_args('swissroll', fidelity, dict(dict(
        T=8, n_hidden=4, n_train=500, n_eval=1000, noise=0.05, beta_1=1e-4, beta_init='geometric',
        beta_min=1e-6), **overrides))
    return experiments.build('swissroll', args, seed=0)


@pytest.fixture(scope='module')
def roll():
    exp = roll_experiment()
    return exp, bound.compile_terms(exp)


def test_stratified_steps_balance_the_set_and_spread_each_example():
    steps, weights, offsets = bound.stratified_steps(37, 5, 8, np.random.default_rng(0))
    assert (weights == 1).all()
    assert steps.shape == (5, 37) and steps.min() == 2 and steps.max() == 8
    counts = np.bincount(steps.ravel(), minlength=9)[2:]
    assert counts.max() - counts.min() <= 1  # every t equally often over the set, to within one
    for row in steps:  # and within every draw
        row_counts = np.bincount(row, minlength=9)[2:]
        assert row_counts.max() - row_counts.min() <= 1
    every = bound.stratified_steps(10, 7, 8, np.random.default_rng(1))[0]
    assert all(sorted(every[:, j]) == list(range(2, 9)) for j in range(10))  # n_t = T - 1: each t once
    # each draw is uniform on 2..T over the randomness of the offsets
    first = np.concatenate([bound.stratified_steps(3, 2, 8, np.random.default_rng(s))[0][:, 0] for s in range(700)])
    assert np.bincount(first, minlength=9)[2:].min() > 150  # 200 expected per step


def test_proposal_draws_follow_q_and_weights_undo_it():
    """t_mix > 0: the steps come from q (the first ones more often) and the weights
    1 / ((T - 1) q(t)) make any sum over t come out as with uniform draws."""
    steps, weights, _ = bound.stratified_steps(50000, 1, 100, np.random.default_rng(0), t_mix=0.5)
    q = bound.t_proposal(100, 0.5)
    assert q.sum() == pytest.approx(1) and q[0] > 10 * q[-1]
    freq = np.bincount(steps[0], minlength=101)[2:] / 50000
    np.testing.assert_allclose(freq, q, atol=0.002)
    cost = 1000.0 / np.arange(1, 100) ** 1.5  # steeply falling, like the per-step KL of images
    assert np.mean(weights[0] * cost[steps[0] - 2]) == pytest.approx(cost.mean(), rel=0.01)
    # each example's draws still spread over the whole range of quantiles
    spread, _, _ = bound.stratified_steps(200, 4, 100, np.random.default_rng(1), t_mix=0.5)
    assert (spread.max(axis=0) > 10).all()


def test_proposal_shrinks_the_bound_error_of_a_steep_cost():
    """A per-step cost like an image network's in training: the proposal's estimates of the
    sum over t spread far less than uniform draws' do."""
    cost = 1000.0 / np.arange(1, 1000) ** 1.3
    estimates = {}
    for mix in (0.0, 0.5):
        values = []
        for s in range(30):
            steps, weights, _ = bound.stratified_steps(300, 1, 1000, np.random.default_rng(s), t_mix=mix)
            values.append(np.mean(weights[0] * cost[steps[0] - 2] * np.random.default_rng(s).lognormal(0, 0.5, 300)))
        estimates[mix] = np.std(values)
    assert estimates[0.5] < estimates[0.0] / 3


def plain_bound(exp, fn, x, n_draws, seed):
    """K with t uniform and independent for every draw: the estimator the stratified one improves."""
    rng = np.random.default_rng(seed)
    total = np.zeros(len(x))
    for _ in range(n_draws):
        x0, t, noise = exp.draw_inputs(rng, x, evaluation=True)
        kl, edges = fn(x0, t, noise)
        total += edges - (exp.diffusion.T_steps - 1) * kl
    return total / n_draws / np.log(2)


def test_stratified_and_plain_estimators_agree(roll):
    exp, fn = roll
    x = exp.test_x[:300]
    strat = bound.heldout_bound(exp, x, n_t=40, seed=1, fn=fn)
    plain = plain_bound(exp, fn, x, 40, seed=2)
    se = np.hypot(strat['stderr_bits'], plain.std(ddof=1) / np.sqrt(len(x)))
    assert abs(strat['K_bits'] - plain.mean()) < 4 * se
    assert strat['K_minus_Lnull_bits'] == pytest.approx(strat['K_bits'] - exp.null_bits)
    assert strat['K_bits'] == pytest.approx(strat['edge_bits'] - 7 * strat['kl_bits'], rel=1e-9)
    # the per-step costs, weighted by how often each t was drawn, average to the KL part of -K
    assert np.average(strat['kl_bits_by_t'], weights=strat['count_by_t']) == pytest.approx(
        strat['edge_bits'] - strat['K_bits'], rel=1e-6)


def test_stratified_stderr_is_honest_and_smaller_than_the_plain_one():
    """One draw per example, 40 steps whose costs differ widely: the spread of K over seeds
    (new t and noise, the same examples) stays within the stratified standard error, which
    is below the plain one (measured: 0.77, 0.80 and 1.06 bits)."""
    exp = roll_experiment(T=40, beta_init='logit', beta_1=1e-5)
    fn = bound.compile_terms(exp)
    x = exp.test_x[:400]
    runs = [bound.heldout_bound(exp, x, n_t=1, seed=s, fn=fn) for s in range(12)]
    spread = np.std([r['K_bits'] for r in runs], ddof=1)
    stderr = np.mean([r['stderr_bits'] for r in runs])
    plain = plain_bound(exp, fn, x, 1, seed=3)
    assert spread < 1.5 * stderr
    assert stderr < 0.9 * plain.std(ddof=1) / np.sqrt(len(x))


def test_stderr_shrinks_like_one_over_sqrt_n(roll):
    exp, fn = roll
    small = bound.heldout_bound(exp, exp.test_x[:60], n_t=2, fn=fn)['stderr_bits']
    large = bound.heldout_bound(exp, exp.test_x[:960], n_t=2, fn=fn)['stderr_bits']
    assert 2.5 < small / large < 6.4  # sqrt(16) = 4


def test_partial_sums_resume_to_the_same_result(roll, tmp_path):
    exp, fn = roll
    x, partial = exp.test_x[:120], str(tmp_path / 'partial.npz')
    whole = bound.heldout_bound(exp, x, n_t=3, seed=4, fn=fn, batch_size=40)
    calls = []

    def failing(*inputs):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return fn(*inputs)
    with pytest.raises(KeyboardInterrupt):
        bound.heldout_bound(exp, x, n_t=3, seed=4, fn=failing, batch_size=40, partial_path=partial)
    assert int(np.load(partial)['units_done']) == 4
    calls.clear()
    resumed = bound.heldout_bound(exp, x, n_t=3, seed=4, fn=lambda *a: calls.append(1) or fn(*a), batch_size=40,
                                  partial_path=partial)
    assert len(calls) == 9 - 4
    assert resumed['K_bits'] == pytest.approx(whole['K_bits'], rel=1e-9)
    assert resumed['kl_bits_by_t'] == pytest.approx(whole['kl_bits_by_t'], rel=1e-9)


def test_code_factor_is_reported_beside_the_papers(tmp_path):
    """The code preset trains with the factor T; the bound is reported with T - 1, and the
    code's figure follows from the same sums (edge_bits - T kl_bits)."""
    exp = roll_experiment('code')
    assert exp.diffusion.kl_multiplier == 8
    r = bound.heldout_bound(exp, exp.test_x[:200], n_t=2)
    assert r['kl_factor'] == 'T-1'
    code = bound.with_kl_multiplier(r, 8)
    assert code == pytest.approx(r['K_bits'] - r['kl_bits'], rel=1e-9) and code < r['K_bits']
    # the training estimate's K (the model's own bound_K, factor T) agrees with that figure draw by draw
    x0, t, noise = exp.draw_inputs(np.random.default_rng(0), exp.test_x[:50], evaluation=True)
    kl, edges = bound.compile_terms(exp)(x0, t, noise)
    inputs, K_nats, _ = exp.training_terms()
    np.testing.assert_allclose(theano.function(inputs, K_nats)(x0, t, noise), edges - 8 * kl, rtol=1e-5)


def test_training_and_evaluation_agree_for_a_code_preset_run(tmp_path):
    """train.py's results.json and evaluate.py call the same estimator: for a code-preset
    run they agree within their standard errors, with the factor stated."""
    import estimators
    import train
    out = tmp_path / 'runs'
    results = train.main(['--dataset', 'swissroll', '--fidelity', 'code', '--max-batches', '100',
                          '--ext-every-n', '50', '--output-dir', str(out), '--model-args',
                          'T=8,n_hidden=4,n_train=1000,n_eval=300,noise=0.05'])
    run_dir = str(next(out.iterdir()))
    evaluation = estimators.evaluate(*estimators.load_experiment(run_dir)[:2], run_dir, n_t=5, progress=False)['bound']
    assert results['kl_factor'] == evaluation['kl_factor'] == 'T-1'
    se = np.hypot(results['stderr_bits'], evaluation['stderr_bits'])
    assert abs(results['K_bits'] - evaluation['K_bits']) < 4 * se
    assert checkpoints.load_checkpoint(run_dir + '/checkpoint.npz')['config']['model']['kl_factor'] == 'T'
    assert results['K_bits_code_factor'] < results['K_bits']
