"""Evaluate a trained diffusion model from its checkpoint: the bound K on a whole
held-out set, its per-step KL costs, discrete bits per dimension, the
importance-weighted bound, the MNIST Parzen estimate, the entropy bounds of Eq. 24,
and a Markdown report over runs.

    python evaluate.py runs/<run>                        # K on the whole test set
    python evaluate.py runs/<run>/checkpoint.npz --n-t 10 --iw-k 1,4,16 --iw-n 200
    python evaluate.py runs/<run> --parzen-samples 10000 --entropy-n 100
    python evaluate.py --report runs/<run_a> runs/<run_b>   # REPORT.md

Results go to RUN_DIR/evaluation_<split>.json (and .png figures) beside the
checkpoint, or to --out-dir; --json also prints them. A long evaluation saves its
partial sums to evaluation_<split>_partial.npz after every chunk and picks them up
when started again with the same arguments.

Units: K is in the paper's units (SPEC section 1): bits per data vector for the toy
sets, bits per pixel of z-scored continuous data for images (all colour channels of
a pixel together). Natural logarithms inside, divided by ln 2 at the end.
"""
import util  # configures Theano before it is imported

import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import theano
from scipy.special import logsumexp
from tqdm import tqdm

import experiments
import model as M
import sampler
import training

floatX = theano.config.floatX
LOG2 = np.log(2.0)
LOG_2PI = np.log(2 * np.pi)
PARZEN_SIGMAS = np.logspace(-2, 0, 21)  # kernel widths tried on the validation set, in [0, 1] pixel units


# ---------------------------------------------------------------- loading

def load_experiment(path, data_path=None):
    """(Experiment with the checkpoint's parameters, checkpoint dict, run directory) from a
    checkpoint file or a run directory holding checkpoint.npz.

    Raises ValueError (one line) when the path is not a checkpoint of this project.
    """
    ckpt_path = training.checkpoint_in(path)
    exp = experiments.from_checkpoint(ckpt_path, data_path)
    checkpoint = training.load_checkpoint(ckpt_path)
    return exp, checkpoint, os.path.dirname(os.path.abspath(ckpt_path))


# ---------------------------------------------------------------- the bound K on a whole set

def stratified_steps(n, n_t, T_steps, rng):
    """Steps t, (n_t, n): draw i of example j gets entry [i, j].

    Read draw-major (k = i n + j), the entries are consecutive random permutations of
    2..T, so over the whole set every t is used floor or ceil of n n_t / (T - 1) times,
    while each single entry is still uniform on 2..T (a position in a uniformly random
    permutation), so every per-example average stays an unbiased estimate of K(x^0).
    """
    n_blocks = -(-n * n_t // (T_steps - 1))
    perms = np.concatenate([rng.permutation(T_steps - 1) for _ in range(n_blocks)])
    return (perms[:n * n_t] + 2).reshape(n_t, n).astype('int64')


def compile_kl_and_bound(exp):
    """(x0, t, noise) -> (summed KL at step t, K_nats) per example (the model's bound_K)."""
    kl = exp.diffusion.kl_term(exp.x0, exp.t, exp.noise)
    return theano.function([exp.x0, exp.t, exp.noise], [kl, exp.K_nats])


def kl_factor_of(diffusion):
    """The factor the model's bound_K puts before the KL sample (T - 1, or T in the code preset)."""
    return getattr(diffusion, 'kl_factor', diffusion.T_steps - 1)


def bound_summary(per_example_bits, null_bits):
    """Mean, K - L_null and standard error of the mean over examples, from per-example K (bits)."""
    n = len(per_example_bits)
    return {'K_bits': float(per_example_bits.mean()),
            'K_minus_Lnull_bits': float(per_example_bits.mean() - null_bits),
            'stderr_bits': float(per_example_bits.std(ddof=1) / np.sqrt(n)), 'n_eval': int(n)}


def heldout_bound(exp, fn, x, n_t=10, seed=0, batch_size=None, partial_path=None, progress=True):
    """K (Eq. 14) on every example of x, n_t Monte Carlo draws of (t, noise) each, with t
    stratified over the set (stratified_steps).

    Every draw is -(T - 1) KL(q(x^{t-1}|x^t,x^0) || p(x^{t-1}|x^t)) + edge entropies: the
    factor is T - 1 whatever the preset (the code preset's T is a training-time bias,
    SPEC section 9 item 11, reported separately as K_bits_code_factor).
    fn: compile_kl_and_bound(exp). The work is done in units (one draw of one minibatch),
    each with its own generator (seed, unit); with partial_path the running sums are saved
    there after every unit and loaded on a restart with the same settings.

    Returns K_bits, K_minus_Lnull_bits, stderr_bits (standard error of the mean over
    examples of the per-example averages; stratification makes it slightly
    conservative), n_eval, n_t, kl_bits_by_t ((T - 1) times the mean KL at each t,
    t = 2..T, in the same unit: what a draw at step t costs; their mean over t is the
    KL part of -K), edge_bits, unit.
    """
    T_steps, n = exp.diffusion.T_steps, len(x)
    batch_size = batch_size or exp.eval_batch_size
    steps = stratified_steps(n, n_t, T_steps, np.random.default_rng([seed, 1]))
    starts = list(range(0, n, batch_size))
    units = [(i, s) for i in range(n_t) for s in starts]
    params_sum = sum(float(np.abs(p.get_value()).sum()) for p in exp.params)  # which checkpoint
    signature = np.array([n, n_t, seed, batch_size, T_steps, params_sum])
    state = {'bound_sum': np.zeros(n), 'kl_sum': np.zeros(n), 'kl_by_t': np.zeros(T_steps + 1),
             'count_by_t': np.zeros(T_steps + 1), 'units_done': 0}
    if partial_path and os.path.exists(partial_path):
        saved = np.load(partial_path)
        if np.array_equal(saved['signature'], signature):
            state = {k: saved[k] if k != 'units_done' else int(saved[k]) for k in state}
    factor = kl_factor_of(exp.diffusion)
    bar = tqdm(total=len(units), initial=state['units_done'], desc='bound K', disable=not progress,
               unit='batch')
    for u in range(state['units_done'], len(units)):
        i, s = units[u]
        x0, _, noise = exp.draw_inputs(np.random.default_rng([seed, 2, u]), x[s:s + batch_size],
                                       evaluation=True)
        t = steps[i, s:s + batch_size]
        kl, k_model = (np.asarray(v, np.float64) for v in fn(x0, t, noise))
        edges = k_model + factor * kl
        state['bound_sum'][s:s + batch_size] += edges - (T_steps - 1) * kl
        state['kl_sum'][s:s + batch_size] += kl
        np.add.at(state['kl_by_t'], t, kl)
        np.add.at(state['count_by_t'], t, 1)
        state['units_done'] = u + 1
        if partial_path:
            save_npz(partial_path, dict(state, signature=signature))
        bar.update(1)
    bar.close()
    to_bits = 1.0 / (LOG2 * exp.n_pixels)
    per_example = state['bound_sum'] / n_t * to_bits
    out = bound_summary(per_example, exp.null_bits)
    counts = np.maximum(state['count_by_t'][2:], 1)
    out.update(n_t=int(n_t), unit=exp.unit, t_per_example='stratified',
               kl_bits_by_t=((T_steps - 1) * state['kl_by_t'][2:] / counts * to_bits).tolist(),
               count_by_t=state['count_by_t'][2:].astype(int).tolist(),
               edge_bits=float((per_example + (T_steps - 1) * state['kl_sum'] / n_t * to_bits).mean()))
    if factor != T_steps - 1:
        out['K_bits_code_factor'] = float(out['K_bits'] - out['edge_bits']) * factor / (T_steps - 1) \
            + out['edge_bits']
    return out


def save_npz(path, arrays):
    """np.savez, atomically (a crash mid-write leaves the previous file)."""
    tmp = path + '.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# ---------------------------------------------------------------- discrete bits per dimension

def discrete_nll_bits_per_dim(K_bits_per_pixel, channels, width, spacing):
    """Upper bound on -log2 P(x) per dimension of the 8-bit data, from K of dequantised data.

    The model's density p over z-scored data, integrated over the box of width `width`
    at each discrete point, is a (sub-normalised) distribution P over 8-bit images as
    long as the boxes do not overlap (width <= spacing, the distance between adjacent
    pixel levels in z units). Jensen's inequality on the uniform dequantisation noise u:
        log P(x) = log w^D E_u[p(x + w u)] >= D log w + E_u[log p(x + w u)] >= D log w + K,
    so per dimension  -log2 P(x) / D <= -(K_bits_per_pixel / C) - log2(w).
    Pixels are mapped to [0, 1] by x / 255 and z-scored by (x / 255 + shift) * scale
    (experiments.image_data), so adjacent levels are scale / 255 apart, and the paper
    preset's width is that, w = scale / 255 (the code preset's w = 1 / (255 scale)).
    Returns None when width > spacing (no valid bound).
    """
    if width > spacing * (1 + 1e-6):
        return None
    return -K_bits_per_pixel / channels - np.log2(width)


# ---------------------------------------------------------------- importance-weighted bound

def log_normal(x, mu, var):
    """log N(x; mu, var) summed over every axis but the first, nats."""
    return (-0.5 * (LOG_2PI + np.log(var) + np.square(x - mu) / var)).reshape(len(x), -1).sum(axis=1)


def log_bernoulli(x, prob):
    """log Bern(x; prob) summed over every axis but the first, nats."""
    prob = np.clip(prob, 1e-7, 1 - 1e-7)
    return (x * np.log(prob) + (1 - x) * np.log1p(-prob)).reshape(len(x), -1).sum(axis=1)


def log_stationary(diffusion, x):
    """log pi(x) of the stationary distribution: N(0, I), or Bern(p) for binomial diffusion."""
    if isinstance(diffusion, M.BinomialDiffusion):
        return log_bernoulli(x, np.full(x.shape, diffusion.p))
    return log_normal(x, 0.0, 1.0)


def trajectory_log_weights(diffusion, kernel, beta, x0, rng):
    """log p(x^{0..T}) / q(x^{1..T} | x^0) for one forward trajectory per row of x0, nats.

    x^1..x^T are drawn from q(x^t | x^{t-1}) (Gaussian: N(sqrt(1-b_t) x^{t-1}, b_t);
    binomial: Bern(x^{t-1}(1-b_t) + p b_t)) and
        log w = log p(x^T) + sum_{t=2}^T [log p(x^{t-1}|x^t) - log q(x^t|x^{t-1})]
                + log p(x^0|x^1) - log q(x^1|x^0),
    with p(x^0|x^1) the time reversal of q(x^1|x^0) under the stationary pi (Appendix
    B.2), so the last line is log pi(x^0) - log pi(x^1). kernel: sampler.compile_reverse_kernel;
    beta: b_1..b_T (numpy). T - 1 network evaluations.
    """
    binomial = isinstance(diffusion, M.BinomialDiffusion)
    x_prev = np.asarray(x0, np.float64)
    log_w = log_stationary(diffusion, x_prev)
    for t in range(1, diffusion.T_steps + 1):
        b = float(beta[t - 1])
        if binomial:
            prob = x_prev * (1 - b) + diffusion.p * b
            xt = (rng.random(x_prev.shape) < prob).astype(np.float64)
            log_q = log_bernoulli(xt, prob)
        else:
            mean = np.sqrt(1 - b) * x_prev
            xt = mean + np.sqrt(b) * rng.standard_normal(x_prev.shape)
            log_q = log_normal(xt, mean, b)
        if t == 1:
            log_w -= log_stationary(diffusion, xt)
        else:
            out = kernel(xt.astype(floatX), np.full(len(xt), t, dtype='int64'))
            log_p = (log_bernoulli(x_prev, out[0]) if binomial
                     else log_normal(x_prev, out[0].astype(np.float64), out[1].astype(np.float64)))
            log_w += log_p - log_q
        x_prev = xt
    return log_w + log_stationary(diffusion, x_prev)


def trajectory_minus_eq14_nats(diffusion, beta, x0):
    """E_q[log w | x^0] - K(x^0) of Eq. 14, per row of x0, nats (exact, no sampling).

    Eq. 14 replaces two data-dependent expectations by constants (Appendix B.1-B.2):
    E[log p(x^T)] by -H_p(X^T) and E[log pi(x^0) - log pi(x^1)] by 0. Gaussian:
    -0.5 (A_T + b_1)(|x^0|^2 - D); binomial: b_1 logit(p) sum_d (x^0_d - p). Both
    vanish on average over data with unit second moment (or mean p), as z-scored data
    and the heartbeat sequences have.
    """
    x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
    if isinstance(diffusion, M.BinomialDiffusion):
        p = diffusion.p
        return beta[0] * np.log(p / (1 - p)) * (x0 - p).sum(axis=1)
    A_T = np.prod(1 - np.asarray(beta, np.float64))
    return -0.5 * (A_T + beta[0]) * (np.square(x0).sum(axis=1) - x0.shape[1])


def log_mean_exp(a, axis=-1):
    """log(mean(exp(a))) along `axis`, stably."""
    return logsumexp(a, axis=axis) - np.log(a.shape[axis])


def importance_weighted_bound(exp, x, ks=(1, 4, 16), seed=0, batch_size=None, progress=True):
    """The importance-weighted bound E[log (1/k) sum_{i<=k} w_i] (Burda et al. 2016) for each
    k in ks, with max(ks) forward trajectories per example of x; k = 1 is K in expectation.

    For each k the max(ks) weights of an example are split into max(ks) // k groups of k
    and the log-mean-exp of each group is averaged. Returns {'k': {K_bits, stderr_bits,
    gain_over_k1_bits}, ..., 'eq14_correction_bits': mean of trajectory_minus_eq14_nats,
    n_eval, unit}, bits per data vector (per pixel for images). For images each trajectory
    has its own dequantisation noise, so for k > 1 the bound is on log E_u[p(x + w u)],
    the discrete likelihood less D log w.
    """
    k_max = max(ks)
    batch_size = batch_size or max(1, exp.eval_batch_size // k_max)
    kernel = sampler.compile_reverse_kernel(exp.diffusion, exp.train_x.ndim)
    beta = np.asarray(exp.beta_values(), np.float64)
    log_w, correction = np.zeros((len(x), k_max)), np.zeros(len(x))
    for s in tqdm(range(0, len(x), batch_size), desc='IW bound', disable=not progress):
        rng = np.random.default_rng([seed, 3, s])
        x0 = exp.draw_inputs(rng, np.repeat(x[s:s + batch_size], k_max, axis=0), evaluation=True)[0]
        w = trajectory_log_weights(exp.diffusion, kernel, beta, x0, rng)
        log_w[s:s + batch_size] = w.reshape(-1, k_max)
        correction[s:s + batch_size] = trajectory_minus_eq14_nats(exp.diffusion, beta, x0).reshape(
            -1, k_max).mean(axis=1)
    to_bits = 1.0 / (LOG2 * exp.n_pixels)
    out = {'n_eval': int(len(x)), 'unit': exp.unit,
           'eq14_correction_bits': float(correction.mean() * to_bits)}
    first = None
    for k in sorted(ks):
        groups = log_mean_exp(log_w[:, :k_max // k * k].reshape(len(x), -1, k), axis=2)
        per_example = groups.mean(axis=1) * to_bits
        r = bound_summary(per_example, exp.null_bits)
        first = r['K_bits'] if first is None else first
        out[str(k)] = {'K_bits': r['K_bits'], 'stderr_bits': r['stderr_bits'],
                       'gain_over_k1_bits': r['K_bits'] - first}
    return out


# ---------------------------------------------------------------- Parzen window (Goodfellow et al. 2014)

def parzen_log_likelihood(samples, x, sigma, chunk=100):
    """log of the Gaussian Parzen density of `samples` (m, D) at each row of x (n, D), nats:
    log (1/m) sum_i N(x; s_i, sigma^2 I), computed chunk rows of x at a time by log-sum-exp."""
    samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    D = samples.shape[1]
    const = -np.log(len(samples)) - 0.5 * D * np.log(2 * np.pi * sigma ** 2)
    s_sq = np.square(samples).sum(axis=1)
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk]
        d2 = np.maximum(np.square(xc).sum(axis=1)[:, None] + s_sq[None, :] - 2 * xc @ samples.T, 0)
        out[i:i + chunk] = logsumexp(-d2 / (2 * sigma ** 2), axis=1) + const
    return out


def choose_parzen_sigma(samples, valid, sigmas=PARZEN_SIGMAS):
    """The width with the highest mean log-likelihood of `valid`; returns (sigma, {sigma: mean})."""
    scores = {float(s): float(parzen_log_likelihood(samples, valid, s).mean()) for s in sigmas}
    return max(scores, key=scores.get), scores


def model_samples(exp, n, seed=0, batch_size=500, progress=True):
    """n samples x^0 of the model (sampler.sample_trajectory; x^1 if the preset skips the last
    step, as sampler.run does), model units, in minibatches."""
    kernel = sampler.compile_reverse_kernel(exp.diffusion, exp.train_x.ndim)
    shape = exp.train_x.shape[1:]
    out = []
    for s in tqdm(range(0, n, batch_size), desc='samples', disable=not progress):
        x0, _ = sampler.sample_trajectory(exp.diffusion, kernel, (min(batch_size, n - s),) + shape,
                                          np.random.default_rng([seed, 4, s]),
                                          skip_last_step=exp.args.get('skip_last_step', False))
        out.append(x0)
    return np.concatenate(out)


def parzen_evaluation(exp, n_samples=10000, n_valid=10000, seed=0, sigmas=PARZEN_SIGMAS, progress=True):
    """Parzen-window log likelihood of the test images (Goodfellow et al. 2014's protocol).

    Model samples and data in [0, 1] pixel units (sampler.to_data_units); sigma
    chosen on the last n_valid training images (Goodfellow et al.'s MNIST validation
    split; our models train on all training images, so this set only picks sigma).
    Returns the test log likelihood, its standard error, in nats and bits, and the grid.
    """
    samples = sampler.to_data_units(exp, model_samples(exp, n_samples, seed, progress=progress))
    samples = samples.reshape(n_samples, -1)
    valid = exp.train_x[-n_valid:].reshape(min(n_valid, len(exp.train_x)), -1) / 255.0
    test = exp.test_x.reshape(len(exp.test_x), -1) / 255.0
    sigma, scores = choose_parzen_sigma(samples, valid, sigmas)
    ll = parzen_log_likelihood(samples, test, sigma)
    stderr = ll.std(ddof=1) / np.sqrt(len(ll))
    return {'ll_nats': float(ll.mean()), 'stderr_nats': float(stderr), 'll_bits': float(ll.mean() / LOG2),
            'stderr_bits': float(stderr / LOG2), 'sigma': sigma, 'n_samples': int(n_samples),
            'n_valid': int(len(valid)), 'n_test': int(len(test)), 'valid_ll_nats_by_sigma': scores}


# ---------------------------------------------------------------- entropy bounds (Eq. 24)

def entropy_bounds(exp, x, seed=0, progress=True):
    """Per-dimension entropies at t = 2..T, nats (SPEC section 6, Eq. 24):

    H_p: the reverse step's 0.5 log(2 pi e Sigma(x^t, t)), averaged over dimensions and
        over x^t ~ q(x^t | x^0) for the examples x;
    lower: H_q(X^t|X^{t-1}) + H_q(X^{t-1}|X^0) - H_q(X^t|X^0)
        = 0.5 log(2 pi e b_t (1 - A_{t-1}) / (1 - A_t));
    upper: H_q(X^t|X^{t-1}) = 0.5 log(2 pi e b_t) (needs unit-variance data);
    and the number of steps where H_p lies outside [lower, upper].
    """
    if not isinstance(exp.diffusion, M.GaussianDiffusion):
        raise ValueError('entropy bounds are for Gaussian diffusion')
    kernel = sampler.compile_reverse_kernel(exp.diffusion, exp.train_x.ndim)
    beta = np.asarray(exp.beta_values(), np.float64)
    A = np.cumprod(1 - beta)
    T_steps = exp.diffusion.T_steps
    rng = np.random.default_rng([seed, 5])
    x0 = exp.draw_inputs(rng, x, evaluation=True)[0].astype(np.float64)
    h_p = []
    for t in tqdm(range(2, T_steps + 1), desc='entropy', disable=not progress):
        xt = np.sqrt(A[t - 1]) * x0 + np.sqrt(1 - A[t - 1]) * rng.standard_normal(x0.shape)
        sigma = kernel(xt.astype(floatX), np.full(len(xt), t, dtype='int64'))[1]
        h_p.append(float(np.mean(0.5 * np.log(2 * np.pi * np.e * sigma.astype(np.float64)))))
    h_p, b = np.array(h_p), beta[1:]
    upper = 0.5 * np.log(2 * np.pi * np.e * b)
    lower = 0.5 * np.log(2 * np.pi * np.e * b * (1 - A[:-1]) / (1 - A[1:]))
    tol = 1e-6
    return {'H_p_nats': h_p.tolist(), 'lower_nats': lower.tolist(), 'upper_nats': upper.tolist(),
            'n_below_lower': int((h_p < lower - tol).sum()), 'n_above_upper': int((h_p > upper + tol).sum()),
            'n_examples': int(len(x))}


# ---------------------------------------------------------------- figures

def kl_by_t_figure(result, path):
    """(T - 1) times the mean KL at each step t: which steps cost the most bits."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    kl = np.asarray(result['kl_bits_by_t'])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(2, len(kl) + 2), kl)
    if (kl > 0).all():
        ax.set_yscale('log')
    ax.set_xlabel('t')
    ax.set_ylabel('(T-1) E[KL at t], {}'.format(result['unit']))
    ax.set_title('cost of each step (mean over t = the KL part of -K)')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def entropy_figure(result, path):
    """H_p of the reverse step against the bounds of Eq. 24, per dimension, over t."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    t = np.arange(2, len(result['H_p_nats']) + 2)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, result['upper_nats'], 'k--', label='upper H_q(X^t|X^{t-1})')
    ax.plot(t, result['lower_nats'], 'k:', label='lower bound, Eq. 24')
    ax.plot(t, result['H_p_nats'], label='model 0.5 log(2 pi e Sigma)')
    ax.set_xlabel('t')
    ax.set_ylabel('entropy per dimension, nats')
    ax.set_title('{} below, {} above'.format(result['n_below_lower'], result['n_above_upper']))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------- one evaluation

def evaluate(exp, checkpoint, out_dir, split='test', n_t=10, seed=0, n_examples=None, batch_size=None,
             iw_k=(), iw_n=100, parzen_samples=0, entropy_n=0, progress=True):
    """Everything asked for, written to OUT_DIR/evaluation_<split>.json (+ figures); returns it."""
    x = exp.test_x if split == 'test' else exp.train_x
    x = x[:n_examples] if n_examples else x
    prefix = os.path.join(out_dir, 'evaluation_{}'.format(split))
    start = time.time()
    r = heldout_bound(exp, compile_kl_and_bound(exp), x, n_t, seed, batch_size, prefix + '_partial.npz',
                      progress)
    out = {'dataset': exp.dataset, 'split': split, 'seed': seed, 'T': exp.diffusion.T_steps,
           'iterations': checkpoint['status']['iterations_done'], 'bound': r}
    out.update(exp.reference_values())
    if exp.dataset in experiments.IMAGES:
        C = exp.train_x.shape[1]
        width, spacing = exp.dequantisation_width, exp.scale / 255
        nll = discrete_nll_bits_per_dim(r['K_bits'], C, width, spacing)
        out['discrete'] = {'nll_bits_per_dim': nll, 'stderr_bits_per_dim': r['stderr_bits'] / C,
                           'bin_width_z': width, 'level_spacing_z': spacing}
    kl_by_t_figure(r, prefix + '_kl_by_t.png')
    if iw_k:
        out['importance_weighted'] = importance_weighted_bound(exp, x[:iw_n], iw_k, seed, progress=progress)
    if parzen_samples:
        out['parzen'] = parzen_evaluation(exp, parzen_samples, seed=seed, progress=progress)
    if entropy_n:
        out['entropy'] = entropy_bounds(exp, x[:entropy_n], seed, progress)
        entropy_figure(out['entropy'], prefix + '_entropy.png')
    out['eval_s'] = round(time.time() - start, 1)
    util.write_json(prefix + '.json', out)
    if os.path.exists(prefix + '_partial.npz'):
        os.remove(prefix + '_partial.npz')
    return out


# ---------------------------------------------------------------- report

def machine():
    """'N cores, CPU model, OS' of this machine."""
    model = util.cpuinfo('model name') or platform.processor() or platform.machine()
    return '{} cores, {}, {} {}'.format(os.cpu_count(), model, platform.system(), platform.release())


def train_command(args):
    """The train.py command line that makes a run, from its checkpoint's config['args']."""
    parts = ['python', 'train.py', '--dataset', args['dataset'], '--fidelity', args['fidelity']]
    if args.get('model_args'):
        pairs = sorted(args['model_args'].items())
        parts += ['--model-args', ','.join('{}={!r}'.format(k, v) for k, v in pairs)]
    for key in ('batch_size', 'lr', 'optimizer', 'seed', 'max_batches', 'max_epochs', 'max_minutes'):
        if args.get(key) is not None:
            parts += ['--' + key.replace('_', '-'), str(args[key])]
    return ' '.join(shlex.quote(p) for p in parts)


def run_row(run_dir):
    """One report row from a run directory (results.json, optional evaluation_test.json, checkpoint)."""
    results = json.load(open(os.path.join(run_dir, 'results.json')))
    row = {'run': os.path.basename(os.path.normpath(run_dir)), 'dataset': results.get('dataset'),
           'preset': results.get('fidelity'), 'unit': results.get('unit', ''),
           'K': results.get('K_bits'), 'K_minus_Lnull': results.get('K_minus_Lnull_bits'),
           'stderr': results.get('stderr_bits'), 'source': 'results.json',
           'paper_K': results.get('paper_K_bits'),
           'paper_K_minus_Lnull': results.get('paper_K_minus_Lnull_bits'),
           'iterations': results.get('iterations'), 'wall_s': results.get('wall_s'), 'command': ''}
    evaluation = os.path.join(run_dir, 'evaluation_test.json')
    if os.path.exists(evaluation):
        e = json.load(open(evaluation))
        row.update(K=e['bound']['K_bits'], K_minus_Lnull=e['bound']['K_minus_Lnull_bits'],
                   stderr=e['bound']['stderr_bits'], source='evaluate.py')
        row['discrete'] = (e.get('discrete') or {}).get('nll_bits_per_dim')
        iw = e.get('importance_weighted') or {}
        ks = sorted((int(k) for k in iw if k.isdigit()), reverse=True)
        if ks:
            row['iw'] = (ks[0], iw[str(ks[0])]['gain_over_k1_bits'])
        if e.get('parzen'):
            row['parzen'] = (e['parzen']['ll_bits'], e['parzen']['stderr_bits'])
    ckpt = os.path.join(run_dir, 'checkpoint.pkl')
    if os.path.exists(ckpt):
        row['command'] = train_command(training.load_checkpoint(ckpt)['config']['args'])
    return row


def fmt(v, digits=3):
    return '' if v is None else '{:.{}f}'.format(v, digits)


def report_table(rows):
    """The Markdown table of runs (README can include it)."""
    lines = ['| run | data set | preset | K | +- | K - L_null | paper K | K - paper | '
             'paper K - L_null | difference | unit | minibatches | training | source |',
             '|---' * 14 + '|']
    for r in rows:
        diff = r['K'] - r['paper_K'] if None not in (r['K'], r['paper_K']) else None
        diff_null = (r['K_minus_Lnull'] - r['paper_K_minus_Lnull']
                     if None not in (r['K_minus_Lnull'], r['paper_K_minus_Lnull']) else None)
        minutes = '' if r['wall_s'] is None else '{:.1f} min'.format(r['wall_s'] / 60)
        lines.append('| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |'.format(
            r['run'], r['dataset'], r['preset'], fmt(r['K']), fmt(r['stderr']), fmt(r['K_minus_Lnull']),
            fmt(r['paper_K']), fmt(diff), fmt(r['paper_K_minus_Lnull']), fmt(diff_null), r['unit'],
            r['iterations'], minutes, r['source']))
    return '\n'.join(lines)


def write_report(run_dirs, path):
    """REPORT.md: the machine, the table, and per run its extra numbers and command."""
    rows = [run_row(d) for d in run_dirs]
    parts = ['# Reproduction report', '',
             'Machine: {} (shared with other runs); Python {}, Theano {}.'.format(
                 machine(), platform.python_version(), theano.__version__), '',
             'K is the lower bound of Eq. 14 on the held-out set in the paper\'s unit (bits per data '
             'vector, bits per pixel of z-scored images); +- is its standard error; paper values '
             'from Table 1 (SPEC section 7). "source" says whether the numbers come from '
             'training\'s final evaluation (results.json) or from evaluate.py (whole test set, t '
             'stratified).', '', report_table(rows), '']
    for r in rows:
        extra = []
        if r.get('discrete') is not None:
            extra.append('discrete NLL {:.3f} bits/dim'.format(r['discrete']))
        if r.get('iw'):
            extra.append('importance-weighted bound (k = {}) tightens K by {:.4f} {}'.format(
                r['iw'][0], r['iw'][1], r['unit']))
        if r.get('parzen'):
            extra.append('Parzen log likelihood {:.1f} +- {:.1f} bits'.format(*r['parzen']))
        parts += ['## {}'.format(r['run']), '']
        parts += ['- ' + e for e in extra]
        parts += ['- command: `{}`'.format(r['command'] or 'unknown (no checkpoint.pkl)'), '']
    text = '\n'.join(parts)
    with open(path, 'w') as f:
        f.write(text)
    return text


# ---------------------------------------------------------------- command line

def build_parser():
    p = util.OneLineParser(description=__doc__.split('\n')[0])
    p.add_argument('paths', nargs='+', help='a checkpoint or run directory (with --report: run directories)')
    p.add_argument('--split', default='test', choices=('test', 'train'))
    p.add_argument('--n-t', type=int, default=10, help='draws of (t, noise) per example')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--n-examples', type=int, default=None, help='only the first N examples (quick runs)')
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--iw-k', default='', help='importance-weighted bound for these k, e.g. 1,4,16')
    p.add_argument('--iw-n', type=int, default=100, help='examples for the importance-weighted bound')
    p.add_argument('--parzen-samples', type=int, default=0, help='Parzen estimate from this many samples')
    p.add_argument('--entropy-n', type=int, default=0, help='entropy bounds (Eq. 24) over this many examples')
    p.add_argument('--out-dir', default=None, help='default: the run directory')
    p.add_argument('--data-path', default=None)
    p.add_argument('--json', action='store_true', help='print the results as JSON')
    p.add_argument('--report', action='store_true', help='write REPORT.md over the run directories')
    p.add_argument('--report-path', default='REPORT.md')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.report:
        missing = [d for d in args.paths if not os.path.exists(os.path.join(d, 'results.json'))]
        if missing:
            util.fail('no results.json in {} (is the run finished?)'.format(', '.join(missing)))
        print(write_report(args.paths, args.report_path))
        return None
    if len(args.paths) != 1:
        util.fail('give one checkpoint or run directory (or --report with several)')
    try:
        ks = tuple(int(k) for k in args.iw_k.split(',') if k.strip())
    except ValueError:
        util.fail('--iw-k takes integers separated by commas, e.g. 1,4,16')
    try:
        exp, checkpoint, run_dir = load_experiment(args.paths[0], args.data_path)
    except ValueError as e:  # not a checkpoint, or a missing data file
        util.fail(str(e))
    if args.parzen_samples and exp.dataset not in experiments.IMAGES:
        util.fail('--parzen-samples is for image data sets')
    if args.entropy_n and not isinstance(exp.diffusion, M.GaussianDiffusion):
        util.fail('--entropy-n is for Gaussian diffusion')
    out_dir = args.out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    out = evaluate(exp, checkpoint, out_dir, args.split, args.n_t, args.seed, args.n_examples,
                   args.batch_size, ks, args.iw_n, args.parzen_samples, args.entropy_n)
    human = sys.stderr if args.json else sys.stdout  # --json: the JSON alone on stdout
    b = out['bound']
    print('K = {K_bits:.4f} +- {stderr_bits:.4f} {unit}, K - L_null = {K_minus_Lnull_bits:.4f} '
          '({n_eval} examples, {n_t} stratified draws each)'.format(**b), file=human)
    if out.get('discrete', {}).get('nll_bits_per_dim') is not None:
        print('discrete NLL <= {:.4f} bits/dim'.format(out['discrete']['nll_bits_per_dim']), file=human)
    print('Written to {}'.format(os.path.join(out_dir, 'evaluation_{}.json'.format(args.split))), file=human)
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    return out


if __name__ == '__main__':
    main()
