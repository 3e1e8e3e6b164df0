"""How training estimates K (bound.training_steps, steprules.ParameterAverage): steps drawn
from a proposal with importance weights give the same expected cost as uniform steps, the
adaptive proposal follows the recorded losses, the parameters' average follows its formula,
and runs with both resume to the last digit."""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import theano
import theano.tensor as T
from conftest import FAST_DIGITS

import bound
import checkpoints
import experiments
import presets
import steprules

pytestmark = pytest.mark.slow  # trains small models (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def roll(**overrides):
    args = presets.model_args('swissroll', 'paper', dict(dict(
        T=12, n_hidden=4, n_train=400, n_eval=200, noise=0.05, beta_1=1e-4, beta_init='geometric',
        beta_min=1e-6), **overrides))
    return experiments.build('swissroll', args, seed=0)


def test_importance_weights_undo_the_proposal():
    q = bound.t_proposal(50, 0.7)
    t = np.arange(2, 51)
    cost = 1.0 / (t - 1.0) ** 2
    assert np.sum(q * bound.importance_weights(q, t) * cost) == pytest.approx(cost.mean(), rel=1e-12)


@pytest.mark.parametrize('train_t', ['harmonic', 'adaptive', 'gradient'])
def test_weighted_training_cost_has_the_uniform_mean_on_a_fixed_network(train_t):
    """The mean of the training estimate of K over many draws is the same whether t is
    uniform or drawn from a proposal and weighted (what keeps the gradient unbiased). The
    adaptive sampler is given a steep loss history first, so that its proposal is far from
    uniform."""
    uniform, weighted = roll(), roll(train_t=train_t, train_t_uniform=0.1, train_t_history=2)
    if train_t in ('adaptive', 'gradient'):
        steps = np.repeat(np.arange(2, 13), 2)
        weighted.steps.record(steps, 100.0 / (steps - 1.0) ** 2)
        assert weighted.steps.proposal()[0] > 20 * weighted.steps.proposal()[-1]
    means = []
    for exp in (uniform, weighted):
        inputs, K_nats, _ = exp.training_terms()
        fn = theano.function(inputs, K_nats)
        x = np.repeat(exp.test_x[:200], 50, axis=0)  # 10,000 draws
        x0, t, noise, w = exp.draw_training_inputs(np.random.default_rng(4), x)
        K = fn(x0, t, noise, *([w] if exp.steps.weighted else [])).astype(np.float64)
        means.append((K.mean(), K.std() / np.sqrt(len(K))))
    (mu_u, se_u), (mu_w, se_w) = means
    assert abs(mu_u - mu_w) < 4 * np.hypot(se_u, se_w)
    assert se_u < 0.05 * abs(mu_u)  # the comparison has power


def test_uniform_training_draws_what_the_diffusion_draws():
    """train_t='uniform' consumes the generator as before (the presets' numbers hold)."""
    exp = roll()
    x0, t, noise, w = exp.draw_training_inputs(np.random.default_rng(1), exp.train_x[:64])
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(t, exp.diffusion.draw_t(rng, 64))
    np.testing.assert_array_equal(noise, exp.diffusion.draw_noise(rng, exp.train_x[:64]))
    assert (w == 1).all() and not exp.steps.weighted and exp.training_terms()[2] is None


def test_adaptive_proposal_is_uniform_until_every_step_has_its_history_then_follows_rms():
    steps = roll(train_t='adaptive', train_t_uniform=0.2, train_t_history=3).steps
    n = 11  # steps 2..12
    steps.record(np.arange(2, 13).repeat(2), np.ones(2 * n))
    np.testing.assert_allclose(steps.proposal(), 1.0 / n)  # two losses each: not yet
    losses = np.arange(1.0, n + 1)
    for k in range(4):  # a ring of 3: the 4th round overwrites the first
        steps.record(np.arange(2, 13), losses * (10 if k == 0 else 1))
    expected = 0.8 * losses / losses.sum() + 0.2 / n
    np.testing.assert_allclose(steps.proposal(), expected)
    t, w = steps.draw(np.random.default_rng(0), 20000)
    np.testing.assert_allclose(np.bincount(t, minlength=13)[2:] / 20000, expected, atol=0.01)
    np.testing.assert_allclose(w, 1.0 / (n * expected[t - 2]), rtol=1e-6)


def test_parameter_average_follows_its_formula_and_swaps_back():
    p = theano.shared(np.zeros(3, 'float32'), name='p')
    g = T.vector('g')
    average = steprules.ParameterAverage([p], 0.9)
    updates, _ = steprules.gradient_updates([g], [p], steprules.RMSProp(0.1), average=average)
    step = theano.function([g], [], updates=updates)
    rng = np.random.default_rng(0)
    expected = np.zeros(3)
    for n in range(30):
        step(rng.normal(size=3).astype('float32'))
        r = min(0.9, (1 + n) / (10 + n))
        expected = r * expected + (1 - r) * p.get_value()
    np.testing.assert_allclose(average.averages[0].get_value(), expected, rtol=1e-5)
    step(np.array([np.nan, 0, 0], 'float32'))  # a dropped step leaves the average too
    np.testing.assert_allclose(average.averages[0].get_value(), expected, rtol=1e-5)
    assert int(average.n.get_value()) == 30
    last = p.get_value()
    with steprules.averaged(average):
        np.testing.assert_array_equal(p.get_value(), average.averages[0].get_value())
    np.testing.assert_array_equal(p.get_value(), last)


def train(args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + args, capture_output=True, text=True,
                       timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_fast_run_resumes_to_the_last_digit(fast_digits_run, tmp_path):
    """conftest's fast run of 20 minibatches, resumed to 30, equals the same run of 30 in one go."""
    train(FAST_DIGITS + ['--max-batches', '30', '--output-dir', str(tmp_path / 'full')])
    part = shutil.copytree(fast_digits_run, str(tmp_path / 'part'))
    train(['--resume_file', os.path.join(part, 'checkpoint.npz'), '--max-batches', '30'])
    full, = glob.glob(str(tmp_path / 'full' / 'diffusion_*'))
    a, b = (checkpoints.load_checkpoint(os.path.join(d, 'checkpoint.npz'))['shared'] for d in (full, part))
    assert sorted(a) == sorted(b) and 'train_t.losses' in a and 'ema/schedule.c' in a
    assert a['train_t.count'].min() >= 2  # the proposal had left the uniform start
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    results = [json.load(open(os.path.join(d, 'results.json'))) for d in (full, part)]
    assert results[0]['K_bits'] == results[1]['K_bits'] and results[1]['iterations'] == 30
    assert results[0]['ema'] == 0.9 and 'K_bits' in results[0]['without_ema']
    assert results[0]['fidelity'] == 'fast'
    choices = {c['key']: c['value'] for c in results[0]['not_the_paper']}
    assert choices['optimizer'] == 'adam' and choices['ema'] == 0.9  # the average is ours, not the paper's


def test_estimate_spread_matches_draws_and_is_smallest_for_the_rms_proposal():
    """bound.estimate_std against the spread of simulated draws, and the rms proposal (what
    the adaptive sampler learns) beats uniform steps on a steep cost."""
    rng = np.random.default_rng(0)
    n_steps = 99
    mean = 50.0 / np.arange(1, n_steps + 1) ** 1.5
    second = 2 * mean ** 2  # costs exponential-like: variance equal to the squared mean
    q = bound.t_proposal(n_steps + 1, 0.5)
    t = rng.choice(n_steps, size=200000, p=q)
    draws = rng.exponential(mean[t]) * bound.importance_weights(q, t + 2)
    assert bound.estimate_std(mean, second, q) == pytest.approx(draws.std(), rel=0.02)
    spread = bound.training_estimate_spread(mean, second)
    assert spread['adaptive u=0.01'] < spread['harmonic u=0.5'] < spread['uniform']


def test_gradient_signal_is_each_examples_gradient_norm_at_the_network_outputs():
    """train_t='gradient' records |d KL_i / d z_i| per example i, z the network's outputs:
    checked against the gradient of each example's KL alone."""
    exp = roll(train_t='gradient')
    inputs, _, signal = exp.training_terms()
    kl, z = exp.diffusion.kl_and_outputs(exp.x0, exp.t, exp.noise)
    i = T.lscalar('i')
    one = theano.function(inputs[:3] + [i], [T.sqrt(sum(T.sum(T.sqr(g)) for g in T.grad(kl[i], list(z))))])
    x0, t, noise, w = exp.draw_training_inputs(np.random.default_rng(2), exp.train_x[:5])
    got = theano.function(inputs, signal, on_unused_input='ignore')(x0, t, noise, w)
    expected = [one(x0, t, noise, j)[0] for j in range(5)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert np.ptp(got) > 0
