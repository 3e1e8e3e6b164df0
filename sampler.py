"""Sampling from a trained model, and from the model multiplied by a second
distribution r(x): inpainting, denoising and Eq. 61 (paper section 2.5, Appendix C).

    python sampler.py runs/<run> --mode sample
    python sampler.py runs/<run> --mode inpaint --mask centre
    python sampler.py runs/<run>/best.npz --mode denoise --noise-std 1.0

Sampling: x^T ~ p(x^T), then x^{t-1} ~ p(x^{t-1} | x^t) for t = T..1. The released
code stops at x^1 (model arg skip_last_step, True in the code preset).

Conditioning on r (Eq. 23, r constant over t as the paper takes it): x^T ~ p(x^T) r(x^T)
and x^{t-1} ~ p(x^{t-1} | x^t) r(x^{t-1}) at every step.
- Denoising, r(x) = N(y; x, s^2) with y = x + noise of variance s^2 (s in the model's
  units: z-scored pixels for images): the product of Gaussians in closed form.
- Inpainting, r a delta on the known pixels: they are set to their values at x^T and
  after every step.
- Any smooth r given as a Theano expression: Eq. 61,
  p~(x^{t-1} | x^t) ~= N(mu + Sigma d log r / dx at mu, Sigma).
Binary data (heartbeat): the Bernoulli f_b is multiplied by r; only inpainting applies.

The reverse steps run over the whole set of n samples; within each step the network
sees minibatches of --batch-size. Noise is drawn for all n at once from one generator
seeded by --seed, so the samples do not depend on the batch size.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import math
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

import cli

# Loaded at their first use, so that --help and usage errors answer without Theano (and
# Theano itself is imported in the functions that use it).
experiments = cli.lazy('experiments')
parallel = cli.lazy('parallel')
training = cli.lazy('training')

MODES = ('sample', 'inpaint', 'denoise')
DISPLAY_COLUMNS = 16  # samples shown per row of the frames figure


def float_x():
    """Theano's floating-point type (float32 here)."""
    import theano
    return theano.config.floatX


# ---------------------------------------------------------------- the reverse kernel

def compile_reverse_kernel(diffusion, x_ndim):
    """A function (xt, t) -> the parameters of p(x^{t-1} | x^t): [mu, Sigma] (Gaussian) or
    [f_b] (binomial), the tuple the diffusion's sample and log_prob take."""
    import theano
    xt = theano.tensor.TensorType(float_x(), (False,) * x_ndim)('xt')
    t = theano.tensor.lvector('t')
    return theano.function([xt, t], list(diffusion.reverse_kernel(xt, t)))


def gaussian_product(mu1, var1, mu2, var2):
    """N(x; mu1, var1) N(x; mu2, var2) is proportional to N(x; mu, var): precisions add,
    the mean is precision-weighted. Written so that var2 = 0 gives exactly (mu2, 0)."""
    total = var1 + var2
    mean = np.where(var2 == 0, mu2, (mu1 * var2 + mu2 * var1) / total)
    return mean.astype(np.result_type(mu1, mu2)), var1 * var2 / total


# ---------------------------------------------------------------- r(x): what the samples are conditioned on

class Unconditioned:
    """r(x) = 1: plain sampling."""

    def tilt(self, params, index):
        """The parameters of p~(x^{t-1} | x^t) for the examples `index` (a slice), from
        those of p(x^{t-1} | x^t): (mu, Sigma) or (f_b,)."""
        return params

    def clamp(self, x):
        return x


class Inpainting(Unconditioned):
    """r a delta on the known entries, constant elsewhere (Figure 5): known entries are
    fixed to `known` (model units, shaped like the samples) wherever `mask` is True. The
    same for Gaussian and binomial diffusion."""

    def __init__(self, known, mask):
        self.known = np.asarray(known, dtype=float_x())
        self.mask = np.broadcast_to(mask, self.known.shape)

    def clamp(self, x):
        return np.where(self.mask, self.known, x).astype(float_x())


def gaussian_parameters(params, what):
    """(mu, Sigma) of a Gaussian kernel; ValueError for a binomial one (f_b,)."""
    if len(params) != 2:
        raise ValueError('{} needs Gaussian diffusion; binary data have no additive noise'.format(what))
    return params


class GaussianObservation(Unconditioned):
    """r(x) = N(y; x, noise_var), the likelihood of a noisy observation y (denoising,
    Figure 3); the product with each Gaussian step is exact."""

    def __init__(self, y, noise_var):
        self.y, self.noise_var = np.asarray(y, dtype=float_x()), float(noise_var)

    def tilt(self, params, index):
        mu, var = gaussian_parameters(params, 'denoising')
        return gaussian_product(mu, var, self.y[index], self.noise_var)


class SmoothObservation(Unconditioned):
    """A smooth r through Eq. 61: p~(x^{t-1} | x^t) ~= N(mu + Sigma g(mu), Sigma) with
    g = d log r / dx. log_r(x) builds the Theano expression of log r at x (summed over
    any axes it likes); x has the samples' shape."""

    def __init__(self, log_r, x_ndim):
        import theano
        x = theano.tensor.TensorType(float_x(), (False,) * x_ndim)('x')
        self.grad_log_r = theano.function([x], theano.tensor.grad(log_r(x).sum(), x))

    def tilt(self, params, index):
        mu, var = gaussian_parameters(params, 'Eq. 61')
        return mu + var * self.grad_log_r(np.asarray(mu, dtype=float_x())), var


# ---------------------------------------------------------------- the reverse trajectory

def reverse_times(T_steps, skip_last_step):
    """The steps t of the reverse trajectory, T..1, or T..2 if skip_last_step (released code)."""
    return list(range(T_steps, 1 if skip_last_step else 0, -1))


def frame_times(T_steps, n_frames, skip_last_step=False):
    """n_frames times evenly spaced from T down to the last state (0, or 1 if skipped)."""
    last = 1 if skip_last_step else 0
    return sorted({int(round(v)) for v in np.linspace(T_steps, last, n_frames)}, reverse=True)


def sample_trajectory(diffusion, kernel, shape, rng, keep=(), condition=None, skip_last_step=False,
                      batch_size=None, progress=False, comm=None):
    """x^0 (x^1 if skip_last_step) and the frames x^t for t in `keep`, model units.

    kernel: from compile_reverse_kernel. condition: an r(x) (Unconditioned by default).
    x^T ~ p(x^T) r(x^T), then x^{t-1} ~ p(x^{t-1} | x^t) r(x^{t-1}) (Eq. 23). The network
    is evaluated on minibatches of batch_size; noise for all shape[0] samples is drawn at
    once per step, so the result does not depend on batch_size, nor on the processes
    (comm, parallel.py): each evaluates the network on its contiguous share of the
    samples, draws the noise of all of them, and the shares are gathered at the end.
    Returns (x, {t: x^t}).
    """
    comm = comm or parallel.SingleProcess()
    condition = condition or Unconditioned()
    a, b = comm.share(shape[0])
    batches = [slice(i, min(i + (batch_size or shape[0]), b)) for i in range(a, b, batch_size or shape[0])]
    x = condition.clamp(diffusion.sample(condition.tilt(diffusion.prior_params(shape), slice(None)), rng))
    frames = {diffusion.T_steps: x} if diffusion.T_steps in keep else {}
    for t in tqdm(reverse_times(diffusion.T_steps, skip_last_step), desc='reverse steps',
                  disable=not progress, leave=False):
        params = [p.copy() for p in diffusion.prior_params(shape)]  # rows of other processes: unused
        for s in batches:
            for whole, part in zip(params, condition.tilt(kernel(x[s], np.full(s.stop - s.start, t, 'int64')), s)):
                whole[s] = part
        x = condition.clamp(diffusion.sample(tuple(params), rng))
        if t - 1 in keep:
            frames[t - 1] = x
    return comm.gather_rows(x[a:b]), {t: comm.gather_rows(f[a:b]) for t, f in frames.items()}


# ---------------------------------------------------------------- data units, masks, observations

def to_model_units(exp, x):
    """Data units -> model units: images on the [0, 1] scale are z-scored."""
    return (exp.pixels.from_unit(x) if exp.pixels else x).astype(float_x())


def to_data_units(exp, x):
    """Model units -> data units: images back to the [0, 1] pixel scale (not clipped)."""
    return (exp.pixels.to_unit(x) if exp.pixels else np.asarray(x)).astype(float_x())


def originals(exp, n):
    """The first n held-out examples (repeated if there are fewer), data units."""
    x = exp.test_x[np.arange(n) % len(exp.test_x)]
    return (experiments.PixelUnits.unit(x, np.float32) if exp.pixels else x).astype(float_x())


def make_mask(kind, example_shape):
    """Boolean mask of one example, True where known.

    'left': the left half is unknown (inpainted), the right half known; for vectors
        (Swiss roll, heartbeat) the first half of the coordinates is unknown (Swiss
        roll: x unknown, y known).
    'centre': a centred square of half the side is unknown (the paper's Figure 5 used
        a 100x100 centre of the bark image); for vectors the middle half of the coordinates.
    anything else: a PNG file (images only, same height and width), nonzero = known.
    """
    if kind in ('left', 'centre'):
        mask = np.ones(example_shape, dtype=bool)
        if len(example_shape) == 3:  # (C, H, W)
            H, W = example_shape[1:]
            if kind == 'left':
                mask[:, :, :W // 2] = False
            else:
                h, w = max(H // 2, 1), max(W // 2, 1)
                mask[:, (H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w] = False
        else:
            D = example_shape[0]
            d = max(D // 2, 1)
            start = 0 if kind == 'left' else (D - d) // 2
            mask[start:start + d] = False
        return mask
    if len(example_shape) != 3:
        raise ValueError('a mask file needs image data; use --mask left or centre')
    image = np.asarray(Image.open(kind).convert('L'))
    if image.shape != tuple(example_shape[1:]):
        raise ValueError('mask {} is {}x{}, the images are {}x{}'.format(
            kind, image.shape[0], image.shape[1], *example_shape[1:]))
    return np.broadcast_to(image != 0, example_shape).copy()


def run(exp, mode, n=49, seed=0, noise_std=1.0, mask='centre', n_frames=8, batch_size=None,
        skip_last_step=None, progress=False, kernel=None, comm=None):
    """Sample, inpaint or denoise with an Experiment; returns a dict of arrays in data units:
    samples, frames (K, n, ...), frame_times, and for inpaint/denoise original, observed,
    mask (True where known). noise_std: s of denoising, in model units (z-scored pixels
    for images; the Swiss roll's own units). skip_last_step: None takes the model arg.
    comm: processes that share the work (sample_trajectory)."""
    if mode not in MODES:
        raise ValueError('unknown mode {!r}; choose from {}'.format(mode, ', '.join(MODES)))
    diffusion = exp.diffusion
    if skip_last_step is None:
        skip_last_step = exp.args.get('skip_last_step', False)
    shape = (n,) + exp.test_x.shape[1:]
    rng = np.random.default_rng([seed, 61])
    out = {}
    condition = Unconditioned()
    if mode != 'sample':
        original = originals(exp, n)
        x0 = to_model_units(exp, original)
        if mode == 'inpaint':
            known = np.broadcast_to(make_mask(mask, shape[1:]), shape)
            condition = Inpainting(x0, known)
            observed = original.copy()
        else:
            known = np.zeros(shape, dtype=bool)
            y = (x0 + noise_std * rng.standard_normal(shape)).astype(float_x())
            condition = GaussianObservation(y, noise_std ** 2)
            observed = to_data_units(exp, y)
        out.update(original=original, observed=observed, mask=np.array(known))
    kernel = kernel or compile_reverse_kernel(diffusion, len(shape))
    times = frame_times(diffusion.T_steps, n_frames, skip_last_step)
    x, frames = sample_trajectory(diffusion, kernel, shape, rng, keep=times, condition=condition, comm=comm,
                                  skip_last_step=skip_last_step, batch_size=batch_size, progress=progress)
    samples, frames = to_data_units(exp, x), np.stack([to_data_units(exp, frames[t]) for t in times])
    if mode == 'inpaint':  # bit-identical known pixels in data units
        samples[out['mask']] = out['original'][out['mask']]
        frames[:, out['mask']] = out['original'][out['mask']]
    out.update(samples=samples, frames=frames, frame_times=np.array(times))
    return out


# ---------------------------------------------------------------- figures

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


def side_by_side(panels, gap=4):
    """Tiled panels (arrays of equal height) next to each other, white gaps between."""
    height = max(p.shape[0] for p in panels)
    blank = np.ones((height, gap, panels[0].shape[2]), np.float32)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=1) for p in panels]
    return np.concatenate(sum(([p, blank] for p in padded), [])[:-1], axis=1)


def paper_layout(result, training_images, columns):
    """The paper's layout: Figure 4 for samples (training images, left, beside samples,
    right, in the same grid); Figure 5 for inpainting (the originals, the trajectory's
    start x^T with the unknown region drawn from the prior, and the inpainted images, one
    example per row)."""
    if 'mask' not in result:
        n = len(result['samples'])
        return side_by_side([tile(training_images[:n], columns), tile(result['samples'], columns)])
    k = min(4, len(result['samples']))
    rows = np.stack([result['original'][:k], result['frames'][0, :k], result['samples'][:k]], axis=1)
    return tile(rows.reshape((-1,) + rows.shape[2:]), 3)


def image_figures(result, prefix, training_images, zoom=None, columns=DISPLAY_COLUMNS):
    """PREFIX_frames.png: one row per frame time (first row the observed inputs when
    there are any, last row the results), one column per sample (the first `columns`);
    PREFIX_samples.png: every final sample; PREFIX_paper.png: paper_layout, for sampling
    and inpainting. Values clipped to [0, 1] for display only. training_images: [0, 1].
    zoom: pixels per image pixel, by default about 64 pixels per image side (1 to 8)."""
    zoom = zoom or int(np.clip(64 // result['samples'].shape[-1], 1, 8))
    k = min(columns, len(result['samples']))
    rows = ([display_observed(result)[:k]] if 'observed' in result else []) + list(result['frames'][:, :k])
    paths = [prefix + '_frames.png', prefix + '_samples.png']
    save_tiles(tile(np.concatenate(rows), k), paths[0], zoom)
    n = len(result['samples'])
    side = int(np.ceil(np.sqrt(n)))
    save_tiles(tile(result['samples'], side), paths[1], zoom)
    if 'observed' not in result or result['mask'].any():
        paths.append(prefix + '_paper.png')
        save_tiles(paper_layout(result, training_images, side), paths[2], zoom)
    return paths


def vector_figure(result, path):
    """One panel per frame, first the observed inputs: a scatter for 2-D data (the Swiss
    roll; an inpainted one shows the known y coordinates as ticks on the left edge),
    else the vectors as image rows (heartbeat; unknown bits grey)."""
    panels = ([('observed', display_observed(result))] if 'observed' in result else [])
    panels += [('t = {}'.format(t), f) for t, f in zip(result['frame_times'], result['frames'])]
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # here, not at the top: it takes a second to load
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return [path]


def save(result, exp, out_dir, mode, arrays=True):
    """The figures OUT_DIR/MODE_*.png and, if `arrays`, OUT_DIR/MODE.npz; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, mode)
    paths = []
    if arrays:
        np.savez_compressed(prefix + '.npz', **result)
        paths.append(prefix + '.npz')
    if exp.pixels:
        training = experiments.PixelUnits.unit(exp.train_x[:len(result['samples'])], np.float32)
        return paths + image_figures(result, prefix, training)
    return paths + vector_figure(result, prefix + '_frames.png')


# ---------------------------------------------------------------- command line

def build_parser():
    p = cli.command_parser(__doc__)
    p.add_argument('checkpoint', help='a run directory (its checkpoint.npz) or a checkpoint file')
    p.add_argument('--mode', default='sample', choices=MODES, help='what to draw')
    p.add_argument('--n', type=int, default=49, help='number of samples')
    p.add_argument('--seed', type=int, default=0, help='seed of the noise')
    p.add_argument('--noise-std', type=float, default=1.0,
                   help='denoise: std s of the added noise in model units (z-scored pixels for '
                        'images); the paper\'s Figure 3 used variance 1')
    p.add_argument('--mask', default='centre',
                   help='inpaint: left (left half unknown), centre (centred square of half the side '
                        'unknown) or a PNG file (nonzero = known)')
    p.add_argument('--frames', type=int, default=8, help='number of frame times shown and stored')
    p.add_argument('--output-dir', '--out', dest='output_dir',
                   help='folder for the samples and figures (default: the checkpoint\'s folder)')
    p.add_argument('--batch-size', type=int, default=100, help='examples per network evaluation')
    p.add_argument('--data-path', help='folder of data files (default: $FUEL_DATA_PATH)')
    p.add_argument('--no-ema', dest='ema', action='store_false',
                   help='sample with the last parameters, not their average (runs with --model-args ema=...)')
    p.add_argument('--skip-last-step', choices=('yes', 'no'),
                   help='stop at x^1 like the released code (default: the model arg skip_last_step)')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.n < 1 or args.frames < 1 or args.batch_size < 1:
        cli.fail('--n, --frames and --batch-size must be positive')
    if not (math.isfinite(args.noise_std) and args.noise_std > 0):
        cli.fail('--noise-std {}: must be a finite number > 0'.format(args.noise_std))
    cli.check_seed(args.seed)
    if args.mode == 'inpaint' and args.mask not in ('left', 'centre') and not os.path.isfile(args.mask):
        cli.fail('--mask {!r} is neither left, centre nor a file'.format(args.mask))
    with parallel.abort_on_error() as comm:  # under mpiexec the processes share the samples
        try:
            checkpoint = training.checkpoint_in(args.checkpoint)
            exp = experiments.from_checkpoint(checkpoint, args.data_path, args.ema)
        except ValueError as e:
            cli.fail(str(e))
        skip = None if args.skip_last_step is None else args.skip_last_step == 'yes'
        try:
            result = run(exp, args.mode, args.n, args.seed, args.noise_std, args.mask, args.frames,
                         args.batch_size, skip, progress=comm.is_writer, comm=comm)
        except ValueError as e:
            cli.fail(str(e))
        if not np.isfinite(result['samples']).all():
            cli.fail('the samples hold NaN or inf: the checkpoint\'s model does not sample (nothing written)')
        if comm.is_writer:
            for path in save(result, exp, args.output_dir or os.path.dirname(os.path.abspath(checkpoint)), args.mode):
                print(path)


if __name__ == '__main__':
    main()
