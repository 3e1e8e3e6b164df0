"""Figures a person can look at: the paper's Figure 1 layout for the Swiss roll,
heartbeat samples beside training sequences, the forward schedule, the image read-out,
training curves of the held-out bound, and evaluate.py's per-step costs and entropies."""
import backend  # noqa: F401  (configures Theano before it is imported)

import os
import textwrap

import matplotlib
import numpy as np
import theano
import theano.tensor as T
from PIL import Image

import experiments
import presets
import reverse

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only back end)


def save(fig, path, dpi=80):
    """Write the figure `fig` to `path` (PNG), cut to what it draws (no title or label cut off),
    and free it."""
    fig.savefig(path, dpi=dpi, bbox_inches='tight', pad_inches=0.1)
    plt.close(fig)


ROLL_UNITS = 'z-scored: the noiseless roll has mean 0 and variance 1'  # datasets.swissroll


def swissroll_figure(exp, path, seed, n=2000):
    """Figure 1 layout: forward q(x^t) at t = 0, T/2, T (top), the learned reverse
    trajectory at the same t (middle), and the drift f_mu(x^t, t) - x^t (bottom); both
    coordinates in the data's units."""
    T_steps = exp.diffusion.T_steps
    times = [0, T_steps // 2, T_steps]
    rng = np.random.default_rng([seed, 7])
    x0 = exp.test_x[:n]
    beta = exp.diffusion.beta_values()
    kernel = reverse.compile_reverse_kernel(exp.diffusion, 2)
    _, frames = reverse.sample_trajectory(exp.diffusion, kernel, x0.shape, rng, keep=times)
    fig, axes = plt.subplots(3, 3, figsize=(10, 10))
    grid = np.stack(np.meshgrid(np.linspace(-2.5, 2.5, 21), np.linspace(-2.5, 2.5, 21)), -1)
    grid = grid.reshape(-1, 2).astype('float32')
    for col, t in enumerate(times):
        forward = exp.diffusion.forward_sample(x0, t, rng, beta)
        axes[0, col].scatter(*forward.T, s=1)
        axes[0, col].set_title('data, forward: q(x^t), t = {}'.format(t))
        axes[1, col].scatter(*frames[t].T, s=1, color='C1')
        axes[1, col].set_title('model, reverse: p(x^t), t = {}'.format(t))
        mu, _ = kernel(grid, np.full(len(grid), max(t, 1), dtype='int64'))
        axes[2, col].quiver(grid[:, 0], grid[:, 1], *(mu - grid).T, color='C2')
        axes[2, col].set_title('drift f_mu(x^t, t) - x^t, t = {}'.format(max(t, 1)))
    for ax in axes.flat:
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect('equal')
    for row in axes:
        row[0].set_ylabel('x_2')
    for ax in axes[-1]:
        ax.set_xlabel('x_1')
    fig.suptitle('Swiss roll, {} held-out points; coordinates {}; drift arrows scaled per panel'.format(
        len(x0), ROLL_UNITS), fontsize=10)
    fig.tight_layout()
    save(fig, path)


def heartbeat_figure(exp, path, seed, n=40):
    """Model samples beside training sequences, one sequence per row, black = 1."""
    rng = np.random.default_rng([seed, 7])
    kernel = reverse.compile_reverse_kernel(exp.diffusion, 2)
    samples, _ = reverse.sample_trajectory(exp.diffusion, kernel, (n, exp.train_x.shape[1]), rng)
    fig, axes = plt.subplots(1, 2, figsize=(8, 6))
    for ax, data, title in ((axes[0], exp.train_x[:n], 'data: training sequences'),
                            (axes[1], samples, 'samples from the model')):
        ax.imshow(data, cmap='gray_r', vmin=0, vmax=1, interpolation='nearest', aspect='auto')
        ax.set_title(title)
        ax.set_xticks(np.arange(0, data.shape[1], 5))
        ax.set_xlabel('time bin')
    axes[0].set_ylabel('sequence')
    fig.suptitle('Binary heartbeat: one sequence of {} bins per row, black = 1'.format(exp.train_x.shape[1]))
    fig.tight_layout()
    save(fig, path)


def schedule_figure(exp, path):
    """The forward schedule b_t over t (learned or fixed)."""
    beta = exp.diffusion.beta_values()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(np.arange(1, len(beta) + 1), beta)
    ax.set_xlabel('t')
    ax.set_ylabel('b_t')
    ax.set_title('forward schedule')
    fig.tight_layout()
    save(fig, path)


DATASET_FIGURES = {'swissroll': ('swissroll_trajectories.png', swissroll_figure),
                   'heartbeat': ('heartbeat_samples.png', heartbeat_figure)}


def experiment_figures(exp, run_dir, seed):
    """Every figure of the experiment, as PNG files in run_dir; returns their paths."""
    paths = [os.path.join(run_dir, 'schedule.png')]
    schedule_figure(exp, paths[0])
    if exp.dataset in DATASET_FIGURES:
        name, figure = DATASET_FIGURES[exp.dataset]
        paths.append(os.path.join(run_dir, name))
        figure(exp, paths[-1], seed)
    return paths


def kl_by_t_figure(result, path):
    """(T - 1) times the mean KL at each step t (bound.heldout_bound): which steps cost the
    most bits."""
    kl = np.asarray(result['kl_bits_by_t'])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(2, len(kl) + 2), kl)
    if (kl > 0).all():
        ax.set_yscale('log')
    ax.set_xlabel('t')
    ax.set_ylabel('(T-1) E[KL at t], {}'.format(result['unit']))
    ax.set_title('cost of each step (mean over t = the KL part of -K)')
    fig.tight_layout()
    save(fig, path)


def entropy_figure(result, path):
    """H_p of the reverse step against the bounds of Eq. 24, per dimension, over t."""
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
    save(fig, path)


def compile_readout(diffusion, x_ndim):
    """A function (xt, t) -> (z_mu, z_Sigma) of the network read out at step t."""
    xt = T.TensorType(theano.config.floatX, (False,) * x_ndim)('xt')
    t = T.lvector('t')
    return theano.function([xt, t], list(diffusion.net(xt, t)))


def readout_figure(exp, path, readout_fn, n_steps=25, seed=0):
    """The temporal basis g_j(t) (top) and, for one held-out image carried to x^t by
    q(x^t | x^0), the read-out z^mu(t) and z^Sigma(t) = sum_j y_j(x^t) g_j(t): the median
    over pixels and channels, with the 10-90% range (Appendix D.2.1)."""
    T_steps = exp.diffusion.T_steps
    ts = np.unique(np.linspace(1, T_steps, n_steps).astype('int64'))
    rng = np.random.default_rng([seed, 9])
    x0 = exp.draw_inputs(rng, exp.test_x[:1])[0]
    xt = exp.diffusion.forward_sample(np.repeat(x0, len(ts), axis=0), ts, rng, exp.diffusion.beta_values())
    z_mu, z_sigma = readout_fn(xt.astype(x0.dtype), ts)
    basis = exp.diffusion.net.basis
    fig, axes = plt.subplots(3, 1, figsize=(6, 8), sharex=True)
    axes[0].plot(np.arange(1, T_steps + 1), basis.T)
    axes[0].set_ylabel('g_j(t)')
    axes[0].set_title('temporal basis and read-out coefficients')
    for ax, z, name in ((axes[1], z_mu, 'z^mu'), (axes[2], z_sigma, 'z^Sigma')):
        lo, mid, hi = np.percentile(z.reshape(len(ts), -1), [10, 50, 90], axis=1)
        ax.fill_between(ts, lo, hi, alpha=0.3)
        ax.plot(ts, mid)
        ax.set_ylabel('{}(t), one image'.format(name))
    axes[2].set_xlabel('t')
    fig.tight_layout()
    save(fig, path)


def heldout_figure(evaluations, path, unit, paper=None):
    """The monitored held-out bound K of one run (heldout_curves_figure); False when there is
    no evaluation yet."""
    return heldout_curves_figure({'this run (held-out monitor)': evaluations}, path, unit, paper)


def heldout_curves_figure(curves, path, unit, paper=None):
    """The monitored held-out bound K with its standard error of each run of `curves` ({label:
    evaluations}), against minibatches (left) and training time (right), the paper's Table 1
    value (`paper`) as a dashed line where there is one; False when no run has an evaluation."""
    curves = {label: e for label, e in curves.items() if e}
    if not curves:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], 'iteration', 'minibatches'), (axes[1], 'wall_s', 'training time (hours)')):
        for name, evaluations in curves.items():
            k = np.array([r['heldout_K_bits'] for r in evaluations])
            se = np.array([r['heldout_stderr_bits'] for r in evaluations])
            x = np.array([r.get(key, np.nan) for r in evaluations], dtype=float) / (3600 if key == 'wall_s' else 1)
            ax.errorbar(x, k, yerr=se, marker='o', ms=3, capsize=2, label=name)
        if paper is not None:
            ax.axhline(paper, color='k', linestyle='--', linewidth=1,
                       label='paper, Table 1: {} {}'.format(paper, unit))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('held-out K ({})'.format(unit))
    axes[0].legend(loc='lower right', fontsize=8)
    fig.suptitle('Monitored bound K (higher is better)')
    fig.tight_layout()
    save(fig, path)
    return True


def extrapolation_figure(evaluations, fit, path, unit='bits/pixel'):
    """The monitored K curve, the fitted K(n) = K_inf - a n^-b extended to the minibatches
    that would reach the target (report.extrapolate), and the target as a line inside the
    axes. Where some of the fit's draws reach the target, the band of their 16-84% range
    is labelled with the share of draws that do; the title says what the uncertainty covers."""
    points = [e for e in evaluations if e.get('iteration', 0) > 0]
    n, k, se = (np.array([e[key] for e in points], float)
                for key in ('iteration', 'heldout_K_bits', 'heldout_stderr_bits'))
    end = max(fit.get('minibatches_16_84', [0, 0])[1], n.max()) * 2
    grid = np.logspace(np.log10(n.min()), np.log10(end), 200)
    curve = fit['K_inf'] - fit['a'] * grid ** -fit['b']
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.errorbar(n, k, yerr=se, fmt='o', ms=3, capsize=2, label='held-out K (monitor, fresh draws each point)')
    ax.plot(grid, curve, label='fit K(n) = K_inf - a n^-b, K_inf = {:.2f} +- {:.2f}'.format(
        fit['K_inf'], fit['K_inf_stderr']))
    ax.axhline(fit['target'], color='k', ls='--', lw=1.5, label='paper {:.3f}'.format(fit['target']))
    reached = 1 - fit['fraction_never_reached']
    if 'minibatches_16_84' in fit:
        ax.axvspan(*fit['minibatches_16_84'], color='C1', alpha=0.15,
                   label='{:.1%} of the fit\'s draws reach the paper; their 16-84% range'.format(reached))
    low = min(k.min() - se.max(), curve.min(), fit['target'])
    high = max(k.max() + se.max(), curve.max(), fit['target'])
    ax.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low))
    ax.set_xscale('log')
    ax.set_xlabel('minibatches')
    ax.set_ylabel('K ({})'.format(unit))
    ax.set_title('Uncertainty: the monitor\'s sampling error, for this form of curve only', fontsize=9)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    save(fig, path)


def training_figures(exp, evaluations, run_dir, compiled):
    """The figures that change during training, as PNG files in run_dir; returns their
    paths. evaluations: the monitor's records so far; compiled: a dict that keeps
    compiled functions between calls."""
    paths = [os.path.join(run_dir, 'schedule.png')]
    schedule_figure(exp, paths[0])
    if exp.pixels:  # image networks are read out through the temporal basis
        if 'readout' not in compiled:
            compiled['readout'] = compile_readout(exp.diffusion, exp.train_x.ndim)
        paths.append(os.path.join(run_dir, 'readout.png'))
        readout_figure(exp, paths[-1], compiled['readout'], seed=exp.seed)
    path = os.path.join(run_dir, 'heldout_bound.png')
    if heldout_figure(evaluations, path, exp.unit, presets.TABLE_1.get(exp.dataset, (None,))[0]):
        paths.append(path)
    return paths


# ---------------------------------------------------------------- samples, inpainting, denoising (sampler.py)

DISPLAY_COLUMNS = 16  # samples shown per row of the frames figure


def tile(images, columns):
    """(n, C, H, W) in [0, 1] -> one (rows*(H+1)-1, columns*(W+1)-1, C) array, 1-pixel gaps."""
    n, C, H, W = images.shape
    rows = -(-n // columns)
    out = np.ones((rows * (H + 1) - 1, columns * (W + 1) - 1, C), dtype=np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (H + 1):r * (H + 1) + H, c * (W + 1):c * (W + 1) + W] = im.transpose(1, 2, 0)
    return out


def save_tiles(array, path, zoom):
    """Save a tiled [0, 1] array as a PNG, each pixel a zoom x zoom block."""
    u8 = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    u8 = u8.repeat(zoom, axis=0).repeat(zoom, axis=1)
    Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8).save(path, optimize=True)


def display_observed(result):
    """The observed row: unknown pixels shown mid-grey (inpainting)."""
    if 'mask' in result and result['mask'].any():
        return np.where(result['mask'], result['observed'], 0.5)
    return result['observed']


def paper_layout(result, training_images, columns):
    """The paper's layout as [(title, tiled array)]: Figure 4 for samples (training images,
    left, beside samples, right, in grids of the same size); Figure 5 for inpainting (per
    example, one row: the original, the trajectory's start x^T with the unknown region drawn
    from the prior, and the inpainted image)."""
    if 'mask' not in result:
        n = len(result['samples'])
        return [('training images', tile(training_images[:n], columns)),
                ('samples from the model', tile(result['samples'], columns))]
    k = min(4, len(result['samples']))
    return [('original', tile(result['original'][:k], 1)),
            ('start x^T (unknown region from the prior)', tile(result['frames'][0, :k], 1)),
            ('inpainted', tile(result['samples'][:k], 1))]


PANEL_PX = 160  # the narrowest panel of save_labelled_panels, in screen pixels, so that its title fits


def save_labelled_panels(panels, path, zoom, dpi=80):
    """Tiled panels [(title, (h, w, C) array in [0, 1])] side by side, each under its title
    (wrapped to the panel's width), at about zoom screen pixels per image pixel; a panel
    narrower than PANEL_PX is widened with white space."""
    height = max(a.shape[0] for _, a in panels)
    widths = [max(zoom * a.shape[1], PANEL_PX) for _, a in panels]  # screen pixels
    titles = [textwrap.fill(title, max(8, w // 7)) for (title, _), w in zip(panels, widths)]  # ~7 px a letter
    lines = max(t.count('\n') + 1 for t in titles)
    fig, axes = plt.subplots(1, len(panels), figsize=((sum(widths) + 8 * zoom * len(panels)) / dpi,
                                                      zoom * height / dpi + 0.3 + 0.2 * lines),
                             gridspec_kw={'width_ratios': widths}, squeeze=False)
    for ax, title, (_, a) in zip(axes[0], titles, panels):
        ax.imshow(np.clip(a[..., 0] if a.shape[-1] == 1 else a, 0, 1), cmap='gray', vmin=0, vmax=1,
                  interpolation='nearest')
        ax.set_title(title, fontsize=10)
        ax.axis('off')
    fig.tight_layout(pad=0.3)
    save(fig, path, dpi)


def save_frames(tiled, labels, path, zoom, dpi=80):
    """A tiled (h, w, C) array in [0, 1] of one row of images per label, each row labelled on
    the left, at about zoom screen pixels per image pixel."""
    h, w = tiled.shape[:2]
    side = (h + 1) // len(labels) - 1  # image height; rows are 1 pixel apart
    fig, ax = plt.subplots(figsize=(zoom * w / dpi + 1.0, zoom * h / dpi + 0.5))
    ax.imshow(np.clip(tiled[..., 0] if tiled.shape[-1] == 1 else tiled, 0, 1), cmap='gray', vmin=0, vmax=1,
              interpolation='nearest')
    ax.set_yticks([(side + 1) * i + (side - 1) / 2 for i in range(len(labels))], labels)
    ax.set_xticks([])
    ax.set_xlabel('one sample per column')
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout(pad=0.3)
    save(fig, path, dpi)


def image_figures(result, prefix, training_images, zoom=None, columns=DISPLAY_COLUMNS):
    """PREFIX_frames.png: one row per frame time, labelled with it (first row the observed
    inputs when there are any, last row the results), one column per sample (the first `columns`);
    PREFIX_samples.png: every final sample; PREFIX_paper.png: paper_layout, for sampling
    and inpainting. Values clipped to [0, 1] for display only. training_images: [0, 1].
    zoom: pixels per image pixel, by default about 64 pixels per image side (1 to 8)."""
    zoom = zoom or int(np.clip(64 // result['samples'].shape[-1], 1, 8))
    k = min(columns, len(result['samples']))
    rows = ([display_observed(result)[:k]] if 'observed' in result else []) + list(result['frames'][:, :k])
    labels = (['observed'] if 'observed' in result else []) + ['t = {}'.format(t) for t in result['frame_times']]
    paths = [prefix + '_frames.png', prefix + '_samples.png']
    save_frames(tile(np.concatenate(rows), k), labels, paths[0], zoom)
    n = len(result['samples'])
    side = int(np.ceil(np.sqrt(n)))
    save_tiles(tile(result['samples'], side), paths[1], zoom)
    if 'observed' not in result or result['mask'].any():
        paths.append(prefix + '_paper.png')
        save_labelled_panels(paper_layout(result, training_images, side), paths[2], zoom)
    return paths


def vector_figure(result, path):
    """One panel per frame, first the observed inputs: a scatter for 2-D data (the Swiss
    roll; an inpainted one shows the known y coordinates as ticks on the left edge),
    else the vectors as image rows (heartbeat; unknown bits grey)."""
    panels = ([('observed', display_observed(result))] if 'observed' in result else [])
    panels += [('t = {}'.format(t), f) for t, f in zip(result['frame_times'], result['frames'])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.7))
    for ax, (title, x) in zip(np.atleast_1d(axes), panels):
        if x.shape[1] == 2:
            if title == 'observed' and result['mask'].any():
                ax.scatter(*result['original'].T, s=1, color='0.8')
                if result['mask'][0, 1]:  # y known: ticks on the left edge
                    ax.plot(np.full(len(x), -2.4), x[:, 1], '_', color='C3', ms=6)
                else:
                    ax.plot(x[:, 0], np.full(len(x), -2.4), '|', color='C3', ms=6)
            else:
                ax.scatter(*x.T, s=1, color='C0' if title == 'observed' else 'C1')
            ax.set_xlim(-2.5, 2.5)
            ax.set_ylim(-2.5, 2.5)
            ax.set_aspect('equal')
        else:
            ax.imshow(x[:40], cmap='gray_r', vmin=0, vmax=1, interpolation='nearest', aspect='auto')
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    two_d = result['frames'].shape[-1] == 2
    fig.supxlabel('x_1 across, x_2 up, each from -2.5 to 2.5 ({})'.format(ROLL_UNITS) if two_d else 'time bin',
                  fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel('x_2' if two_d else 'sequence', fontsize=9)
    fig.tight_layout()
    save(fig, path, dpi=60)
    return [path]


def shown_training_images(train_x, n, seed=0):
    """n training images in [0, 1] drawn without replacement by a fixed seed: a training set
    stored sorted by class (mnist5k) would otherwise show its first class only."""
    pick = np.sort(np.random.default_rng(seed).choice(len(train_x), min(n, len(train_x)), replace=False))
    return experiments.PixelUnits.unit(train_x[pick], np.float32)


def save_samples(result, exp, out_dir, mode, arrays=True):
    """The figures OUT_DIR/MODE_*.png and, if `arrays`, OUT_DIR/MODE.npz; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, mode)
    paths = []
    if arrays:
        np.savez_compressed(prefix + '.npz', **result)
        paths.append(prefix + '.npz')
    if exp.pixels:
        return paths + image_figures(result, prefix, shown_training_images(exp.train_x, len(result['samples'])))
    return paths + vector_figure(result, prefix + '_frames.png')
