"""The estimates evaluate.py makes from a checkpoint: the bound K on a whole held-out set
(bound.py), its per-step KL costs, discrete bits per dimension, the importance-weighted
bound, the MNIST Parzen estimate and the entropy bounds of Eq. 24; their JSON file and
figures.

Units: K is in the paper's units (Table 1): bits per data vector for the toy
sets, bits per pixel of z-scored continuous data for images (all colour channels of
a pixel together). Natural logarithms inside, divided by ln 2 at the end.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import math
import os
import sys
import time

import numpy as np
from scipy.special import logsumexp

import bound
import checkpoints
import cli
import datasets
import experiments
import figures
import mainloop
import memory
import meter
import parallel
import provenance
import reverse
import rundirs
import util

# A bound this many times |L_null| below L_null is far worse than the null model N(0, I) (or
# Bernoulli(p)), which needs no training; an untrained network starts within 2 bits of it.
ABSURD_MARGIN = 10
PARZEN_SIGMAS = np.logspace(-2, 0, 21)  # kernel widths tried on the validation set, in [0, 1] pixel units


def load_experiment(path, data_path=None, ema=True):
    """(Experiment with the checkpoint's parameters, checkpoint dict, run directory) from a
    checkpoint file or a run directory holding checkpoint.npz; the parameters' average
    where the run kept one and `ema` (experiments.from_checkpoint).

    Raises ValueError (one line) when the path is not a checkpoint of this project.
    """
    ckpt_path = checkpoints.checkpoint_in(path)
    exp = experiments.from_checkpoint(ckpt_path, data_path, ema)
    checkpoint = checkpoints.load_checkpoint(ckpt_path)
    return exp, checkpoint, os.path.dirname(os.path.abspath(ckpt_path))


def mean_bound(per_example_bits, null_bits):
    """Mean, K - L_null and standard error of the mean over examples, from per-example K (bits)."""
    n = len(per_example_bits)
    return {'K_bits': float(per_example_bits.mean()),
            'K_minus_Lnull_bits': float(per_example_bits.mean() - null_bits),
            'stderr_bits': float(per_example_bits.std(ddof=1) / np.sqrt(n)), 'n_eval': int(n)}


def crops_bound(exp, x, n_t, seed, comm=None, progress=False):
    """K of held-out crops (one of exp.crop x exp.crop per image of x, drawn from the seed)
    for a network trained on crops: the training objective's own data, beside the bound
    on whole images."""
    crops = experiments.random_crops(x, exp.crop, np.random.default_rng([seed, 8]))
    r = bound.heldout_bound(exp, crops, n_t, seed, comm=comm, progress=progress)
    return dict({k: r[k] for k in ('K_bits', 'K_minus_Lnull_bits', 'stderr_bits', 'n_eval', 'n_t')}, crop=exp.crop)


def heldout_report(exp, x, n_t, seed, comm=None, **options):
    """bound.heldout_bound on x (options: its batch_size, partial_path, progress), with K
    under the model's own KL factor beside it when that is not T - 1, and for a network
    trained on crops the bound on held-out crops too (crops_bound): what train.py's final
    evaluation and evaluate.py report."""
    r = bound.heldout_bound(exp, x, n_t, seed, comm=comm, **options)
    warning = implausible(r['K_bits'], exp.null_bits, exp.unit)
    if warning:
        r['warning'] = warning
        if (comm or parallel.SingleProcess()).is_writer:
            print('warning: ' + warning, file=sys.stderr, flush=True)
    if exp.diffusion.kl_multiplier != exp.diffusion.T_steps - 1:
        r['K_bits_code_factor'] = bound.with_kl_multiplier(r, exp.diffusion.kl_multiplier)
    if exp.crop:  # whole images above; the crops the network trained on here
        r['crops'] = crops_bound(exp, x, n_t, seed, comm, options.get('progress', False))
    return r


def implausible(K_bits, null_bits, unit):
    """What is wrong with a bound K below the null model's L_null by more than
    ABSURD_MARGIN |L_null| (a diverged run), or None."""
    if K_bits - null_bits < -ABSURD_MARGIN * abs(null_bits):
        return ('K = {:.6g} {} is far below the null model\'s L_null = {:.4g} (which needs no training): the '
                'run has diverged; train again with a lower --lr'.format(K_bits, unit, null_bits))
    return None


# ---------------------------------------------------------------- discrete bits per dimension

def discrete_nll_bits_per_dim(K_bits_per_pixel, channels, width, spacing):
    """Upper bound on -log2 P(x) per dimension of the 8-bit data, from K of dequantised data.

    The model's density p over z-scored data, integrated over the box of width `width`
    at each discrete point, is a (sub-normalised) distribution P over 8-bit images as
    long as the boxes do not overlap (width <= spacing, the distance between adjacent
    pixel levels in z units). Jensen's inequality on the uniform dequantisation noise u:
        log P(x) = log w^D E_u[p(x + w u)] >= D log w + E_u[log p(x + w u)] >= D log w + K,
    so per dimension  -log2 P(x) / D <= -(K_bits_per_pixel / C) - log2(w).
    (experiments.PixelUnits: adjacent levels are scale / 255 apart, and the paper preset's
    width is that, w = scale / 255; the code preset's w = 1 / (255 scale).)
    Returns None when width > spacing (no valid bound).
    """
    if width > spacing * (1 + 1e-6):
        return None
    return -K_bits_per_pixel / channels - np.log2(width)


# ---------------------------------------------------------------- importance-weighted bound

def trajectory_log_weights(diffusion, kernel, beta, x0, rng):
    """log p(x^{0..T}) / q(x^{1..T} | x^0) for one forward trajectory per row of x0, nats.

    x^1..x^T are drawn from q(x^t | x^{t-1}) (diffusion.forward_step) and
        log w = log p(x^T) + sum_{t=2}^T [log p(x^{t-1}|x^t) - log q(x^t|x^{t-1})]
                + log p(x^0|x^1) - log q(x^1|x^0),
    with p(x^0|x^1) the time reversal of q(x^1|x^0) under the stationary pi (Appendix
    B.2), so the last line is log pi(x^0) - log pi(x^1). kernel: reverse.compile_reverse_kernel;
    beta: b_1..b_T (numpy). T - 1 network evaluations.
    """
    x_prev = np.asarray(x0, np.float64)
    log_w = diffusion.log_stationary(x_prev)
    for t in range(1, diffusion.T_steps + 1):
        xt, log_q = diffusion.forward_step(x_prev, t, rng, beta)
        if t == 1:
            log_w -= diffusion.log_stationary(xt)
        else:
            params = kernel(xt.astype(experiments.floatX), np.full(len(xt), t, dtype='int64'))
            log_w += diffusion.log_prob(x_prev, params) - log_q
        x_prev = xt
    return log_w + diffusion.log_stationary(x_prev)


def log_mean_exp(a, axis=-1):
    """log(mean(exp(a))) along `axis`, stably."""
    return logsumexp(a, axis=axis) - np.log(a.shape[axis])


def importance_weighted_bound(exp, x, ks=(1, 4, 16), seed=0, batch_size=None, progress=True, comm=None):
    """The importance-weighted bound E[log (1/k) sum_{i<=k} w_i] (Burda et al. 2016) for each
    k in ks, with max(ks) forward trajectories per example of x; k = 1 is K in expectation.

    For each k the max(ks) weights of an example are split into max(ks) // k groups of k
    and the log-mean-exp of each group is averaged. Returns {'k': {K_bits, stderr_bits,
    gain_over_k1_bits}, ..., 'eq14_correction_bits': the mean of diffusion.eq14_correction,
    n_eval, unit}, bits per data vector (per pixel for images). For images each trajectory
    has its own dequantisation noise, so for k > 1 the bound is on log E_u[p(x + w u)],
    the discrete likelihood less D log w. comm: processes that share the minibatches.
    """
    comm = comm or parallel.SingleProcess()
    k_max = max(ks)
    batch_size = batch_size or max(1, exp.eval_batch_size // k_max)
    kernel = reverse.compile_reverse_kernel(exp.diffusion, exp.train_x.ndim)
    beta = exp.diffusion.beta_values()
    log_w, correction = np.zeros((len(x), k_max)), np.zeros(len(x))
    for s in meter.track(parallel.rank_units(range(0, len(x), batch_size), comm), 'IW bound', enabled=progress):
        rng = np.random.default_rng([seed, 3, s])
        x0 = exp.draw_inputs(rng, np.repeat(x[s:s + batch_size], k_max, axis=0), evaluation=True)[0]
        log_w[s:s + batch_size] = trajectory_log_weights(exp.diffusion, kernel, beta, x0, rng).reshape(-1, k_max)
        correction[s:s + batch_size] = exp.diffusion.eq14_correction(beta, x0).reshape(-1, k_max).mean(axis=1)
    log_w, correction = comm.allreduce_sum(log_w), comm.allreduce_sum(correction)  # each row from one process
    to_bits = 1.0 / (util.LOG2 * exp.n_pixels(x))
    out = {'n_eval': int(len(x)), 'unit': exp.unit, 'eq14_correction_bits': float(correction.mean() * to_bits)}
    first = None
    for k in sorted(ks):
        groups = log_mean_exp(log_w[:, :k_max // k * k].reshape(len(x), -1, k), axis=2)
        r = mean_bound(groups.mean(axis=1) * to_bits, exp.null_bits)
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


def model_samples(exp, n, seed=0, batch_size=500, progress=True, comm=None):
    """n samples x^0 of the model (reverse.sample_trajectory; x^1 if the preset skips the last
    step, as reverse.run does), model units, in minibatches, each from its own generator;
    comm: processes that share the minibatches (each a contiguous share)."""
    comm = comm or parallel.SingleProcess()
    kernel = reverse.compile_reverse_kernel(exp.diffusion, exp.train_x.ndim)
    shape = exp.train_x.shape[1:]
    starts = list(range(0, n, batch_size))
    a, b = comm.share(len(starts))
    out = []
    for s in meter.track(starts[a:b], 'samples', enabled=progress):
        x0, _ = reverse.sample_trajectory(exp.diffusion, kernel, (min(batch_size, n - s),) + shape,
                                          np.random.default_rng([seed, 4, s]),
                                          skip_last_step=exp.args.get('skip_last_step', False))
        out.append(x0)
    return comm.gather_rows(np.concatenate(out) if out else np.zeros((0,) + shape, experiments.floatX))


def parzen_evaluation(exp, n_samples=10000, n_valid=10000, seed=0, sigmas=PARZEN_SIGMAS, progress=True, comm=None,
                      valid_x=None):
    """Parzen-window log likelihood of the test images (Goodfellow et al. 2014's protocol).

    Model samples and data in [0, 1] pixel units; sigma chosen on the first n_valid images
    of `valid_x`, a validation split not trained on (mnist5k's), else on the last n_valid
    training images (Goodfellow et al.'s MNIST validation split; our models train on all
    training images, so this set only picks sigma). Returns the test log likelihood, its
    standard error, in nats and bits, and the grid.
    """
    samples = exp.pixels.to_unit(model_samples(exp, n_samples, seed, progress=progress, comm=comm)).reshape(
        n_samples, -1)
    valid_from_train = valid_x is None
    valid_x = exp.train_x[-n_valid:] if valid_from_train else valid_x[:n_valid]
    valid = experiments.PixelUnits.unit(valid_x).reshape(len(valid_x), -1)
    test = experiments.PixelUnits.unit(exp.test_x).reshape(len(exp.test_x), -1)
    sigma, scores = choose_parzen_sigma(samples, valid, sigmas)
    ll = parzen_log_likelihood(samples, test, sigma)
    stderr = ll.std(ddof=1) / np.sqrt(len(ll))
    return {'ll_nats': float(ll.mean()), 'stderr_nats': float(stderr), 'll_bits': float(ll.mean() / util.LOG2),
            'stderr_bits': float(stderr / util.LOG2), 'sigma': sigma, 'n_samples': int(n_samples),
            'n_valid': int(len(valid)), 'valid_from': 'training images' if valid_from_train else 'validation split',
            'n_test': int(len(test)), 'valid_ll_nats_by_sigma': scores}


# ---------------------------------------------------------------- entropy bounds (Eq. 24)

def reverse_entropies(exp, x, seed=0, progress=True):
    """Per-dimension entropies at t = 2..T, nats (Sec. 2.6, Eq. 24): H_p, the reverse
    step's 0.5 log(2 pi e Sigma(x^t, t)) averaged over dimensions and over x^t ~ q(x^t | x^0)
    for the examples x, against the bounds of diffusion.entropy_bounds; and the number of
    steps where H_p lies outside them. ValueError for binomial diffusion."""
    beta = exp.diffusion.beta_values()
    lower, upper = exp.diffusion.entropy_bounds(beta)
    kernel = reverse.compile_reverse_kernel(exp.diffusion, exp.train_x.ndim)
    rng = np.random.default_rng([seed, 5])
    x0 = exp.draw_inputs(rng, x, evaluation=True)[0].astype(np.float64)
    h_p = []
    for t in meter.track(range(2, exp.diffusion.T_steps + 1), 'entropy', unit='steps', enabled=progress):
        xt = exp.diffusion.forward_sample(x0, t, rng, beta)
        sigma = kernel(xt.astype(experiments.floatX), np.full(len(xt), t, dtype='int64'))[1]
        h_p.append(float(np.mean(0.5 * np.log(2 * np.pi * np.e * sigma.astype(np.float64)))))
    h_p, tol = np.array(h_p), 1e-6
    return {'H_p_nats': h_p.tolist(), 'lower_nats': lower.tolist(), 'upper_nats': upper.tolist(),
            'n_below_lower': int((h_p < lower - tol).sum()), 'n_above_upper': int((h_p > upper + tol).sum()),
            'n_examples': int(len(x))}


# ---------------------------------------------------------------- one evaluation

def evaluate(exp, checkpoint, out_dir, split='test', n_t=10, seed=0, n_examples=None, batch_size=None,
             iw_k=(), iw_n=100, parzen_samples=0, entropy_n=0, progress=True, comm=None, averaged=None, valid_x=None):
    """Everything asked for, written to OUT_DIR/evaluation_<split>.json (+ figures); returns it.
    valid_x: the validation split that picks the Parzen window (None: the last training images).
    comm: processes that share the bound, the importance weights and the Parzen samples;
    the writer alone computes the entropies and writes (the others return None).
    averaged: whether exp holds the run's average of the parameters (None: the run kept
    none); False writes evaluation_<split>_last.json, the last parameters'."""
    comm = comm or parallel.SingleProcess()
    x = exp.test_x if split == 'test' else exp.train_x
    x = x[:n_examples] if n_examples else x
    prefix = os.path.join(out_dir, 'evaluation_{}{}'.format(split, '_last' if averaged is False else ''))
    start = time.time()
    r = heldout_report(exp, x, n_t, seed, comm, batch_size=batch_size, partial_path=prefix + '_partial.npz',
                       progress=progress)
    out = {'dataset': exp.dataset, 'split': split, 'seed': seed, 'T': exp.diffusion.T_steps,
           'iterations': checkpoint['status']['iterations_done'], 'bound': r,
           'parameters': {None: 'last', True: 'average (ema {})'.format(exp.args.get('ema')),
                          False: 'last (the run also keeps an average)'}[averaged],
           'environment': provenance.environment()}
    out.update(exp.reference_values())
    if exp.pixels:
        C = exp.train_x.shape[1]
        nll = discrete_nll_bits_per_dim(r['K_bits'], C, exp.pixels.width, exp.pixels.level_spacing)
        out['discrete'] = {'nll_bits_per_dim': nll, 'stderr_bits_per_dim': r['stderr_bits'] / C,
                           'bin_width_z': exp.pixels.width, 'level_spacing_z': exp.pixels.level_spacing}
    partial = bound.partial_file(prefix + '_partial.npz', comm)
    if os.path.exists(partial):  # the bound is done: its partial sums are not needed again
        os.remove(partial)
    if iw_k:
        out['importance_weighted'] = importance_weighted_bound(exp, x[:iw_n], iw_k, seed, progress=progress, comm=comm)
    if parzen_samples:
        out['parzen'] = parzen_evaluation(exp, parzen_samples, seed=seed, progress=progress, comm=comm,
                                          valid_x=valid_x)
    if not comm.is_writer:
        return None
    figures.kl_by_t_figure(r, prefix + '_kl_by_t.png')
    if entropy_n:
        out['entropy'] = reverse_entropies(exp, x[:entropy_n], seed, progress)
        figures.entropy_figure(out['entropy'], prefix + '_entropy.png')
    out['eval_s'] = round(time.time() - start, 1)
    rundirs.write_json(prefix + '.json', out)
    return out


# ---------------------------------------------------------------- evaluate.py's work

def evaluate_command(args, ks, comm):
    """evaluate.py on one process of the launch: the checkpoint loaded, the memory checked,
    evaluate() run, its summary printed."""
    try:
        exp, checkpoint, run_dir = load_experiment(args.path, args.data_path, args.ema)
    except ValueError as e:  # not a checkpoint, or a missing data file
        cli.fail(str(e))
    if args.parzen_samples and not exp.pixels:
        cli.fail('--parzen-samples is for image data sets')
    if args.entropy_n:
        try:
            exp.diffusion.entropy_bounds(exp.diffusion.beta_values())
        except ValueError as e:
            cli.fail('--entropy-n: {}'.format(e))
    n = len(exp.test_x if args.split == 'test' else exp.train_x)
    too_large = memory.check_evaluation(
        {'n_t': args.n_t, 'batch_size': args.batch_size or exp.eval_batch_size, 'iw_k': ks, 'iw_n': args.iw_n,
         'parzen_samples': args.parzen_samples},
        {'n_t': 10, 'batch_size': exp.eval_batch_size, 'iw_k': (), 'iw_n': 100, 'parzen_samples': 0},
        min(args.n_examples or n, n), int(np.prod(exp.train_x.shape[1:])), exp.diffusion.T_steps)
    if too_large:
        cli.fail(too_large)
    refusal, notice = memory.check_evaluation_time(exp, min(args.n_examples or n, n), args.n_t, ks, args.iw_n,
                                                   args.parzen_samples)
    if refusal:
        cli.fail(refusal)
    if notice and comm.is_writer:
        print(notice, file=sys.stderr if args.json else sys.stdout, flush=True)
    out_dir = args.output_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    averaged = args.ema if exp.args.get('ema') else None
    valid_x = datasets.validation_images(exp.dataset, args.data_path or checkpoint['config']['args'].get(
        'data_path')) if args.parzen_samples else None
    out = evaluate(exp, checkpoint, out_dir, args.split, args.n_t, args.seed, args.n_examples, args.batch_size,
                   ks, args.iw_n, args.parzen_samples, args.entropy_n, progress=comm.is_writer, comm=comm,
                   averaged=averaged, valid_x=valid_x)
    if out is None:  # a process other than the writer
        return None
    human = sys.stderr if args.json else sys.stdout  # --json: the JSON alone on stdout
    b = out['bound']
    print('K = {K_bits:.4f} +- {stderr_bits:.4f} {unit}, K - L_null = {K_minus_Lnull_bits:.4f} '
          '({n_eval} examples, {n_t} stratified draws each)'.format(**b), file=human)
    print('Spread of one draw of the training estimate of K, by train_t: ' + ', '.join(
        '{} {:.3g}'.format(k, v) for k, v in b['training_estimate_std_bits'].items()), file=human)
    if out.get('discrete', {}).get('nll_bits_per_dim') is not None:
        print('discrete NLL <= {:.4f} bits/dim'.format(out['discrete']['nll_bits_per_dim']), file=human)
    print('Parameters: {}. Written to {}'.format(out['parameters'], os.path.join(
        out_dir, 'evaluation_{}{}.json'.format(args.split, '_last' if averaged is False else ''))), file=human)
    if args.json:
        print(rundirs.to_json(out, indent=2))
    if not math.isfinite(b['K_bits']):
        print('evaluate.py: error: the bound is not a number (null in the results): the checkpoint gives no '
              'finite bound', file=sys.stderr)
        raise parallel.SharedExit(parallel.NONFINITE)  # the writer alone, the others' part done
    return out


def command(args, ks):
    """evaluate.py's work once its command line is read: every process of an MPI launch
    shares it; a signal keeps the bound's partial sums, a failed write is one line."""
    with parallel.abort_on_error() as comm, mainloop.signals_raise():  # under mpiexec the processes share the work
        try:
            return evaluate_command(args, ks, comm)
        except mainloop.Interrupted as e:
            if comm.is_writer:
                print('evaluate.py: stopped by {}; the bound\'s partial sums are kept: the same command goes on '
                      'from them'.format(e), file=sys.stderr)
            sys.exit(parallel.INTERRUPTED)
        except OSError as e:  # writing the results, or the partial sums
            cli.fail('{}: {}'.format(e.filename, e.strerror or e))
