"""The reverse process run from noise to data: sampling, and sampling from the model
multiplied by a second distribution r(x): inpainting, denoising and Eq. 61 (paper
section 2.5, Appendix C). sampler.py is its command.

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

import numpy as np
import theano
from PIL import Image

import experiments
import meter
import parallel

MODES = ('sample', 'inpaint', 'denoise')
floatX = theano.config.floatX


# ---------------------------------------------------------------- the reverse kernel

def compile_reverse_kernel(diffusion, x_ndim):
    """A function (xt, t) -> the parameters of p(x^{t-1} | x^t): [mu, Sigma] (Gaussian) or
    [f_b] (binomial), the tuple the diffusion's sample and log_prob take."""
    xt = theano.tensor.TensorType(floatX, (False,) * x_ndim)('xt')
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
        self.known = np.asarray(known, dtype=floatX)
        self.mask = np.broadcast_to(mask, self.known.shape)

    def clamp(self, x):
        return np.where(self.mask, self.known, x).astype(floatX)


def gaussian_parameters(params, what):
    """(mu, Sigma) of a Gaussian kernel; ValueError for a binomial one (f_b,)."""
    if len(params) != 2:
        raise ValueError('{} needs Gaussian diffusion; binary data have no additive noise'.format(what))
    return params


class GaussianObservation(Unconditioned):
    """r(x) = N(y; x, noise_var), the likelihood of a noisy observation y (denoising,
    Figure 3); the product with each Gaussian step is exact."""

    def __init__(self, y, noise_var):
        self.y, self.noise_var = np.asarray(y, dtype=floatX), float(noise_var)

    def tilt(self, params, index):
        mu, var = gaussian_parameters(params, 'denoising')
        return gaussian_product(mu, var, self.y[index], self.noise_var)


class SmoothObservation(Unconditioned):
    """A smooth r through Eq. 61: p~(x^{t-1} | x^t) ~= N(mu + Sigma g(mu), Sigma) with
    g = d log r / dx. log_r(x) builds the Theano expression of log r at x (summed over
    any axes it likes); x has the samples' shape."""

    def __init__(self, log_r, x_ndim):
        import theano
        x = theano.tensor.TensorType(floatX, (False,) * x_ndim)('x')
        self.grad_log_r = theano.function([x], theano.tensor.grad(log_r(x).sum(), x))

    def tilt(self, params, index):
        mu, var = gaussian_parameters(params, 'Eq. 61')
        return mu + var * self.grad_log_r(np.asarray(mu, dtype=floatX)), var


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
    """x^0 (x^1 if skip_last_step) and the frames x^t for t in `keep`, model units: a draw of
    the reverse trajectory p(x^{0...T}) = p(x^T) prod_t p(x^{t-1} | x^t) (Eq. 5).

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
    for t in meter.track(reverse_times(diffusion.T_steps, skip_last_step), 'reverse steps', unit='steps',
                         enabled=progress, leave=False):
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
    return (exp.pixels.from_unit(x) if exp.pixels else x).astype(floatX)


def to_data_units(exp, x):
    """Model units -> data units: images back to the [0, 1] pixel scale (not clipped)."""
    return (exp.pixels.to_unit(x) if exp.pixels else np.asarray(x)).astype(floatX)


def originals(exp, n):
    """The first n held-out examples (repeated if there are fewer), data units."""
    x = exp.test_x[np.arange(n) % len(exp.test_x)]
    return (experiments.PixelUnits.unit(x, np.float32) if exp.pixels else x).astype(floatX)


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
            y = (x0 + noise_std * rng.standard_normal(shape)).astype(floatX)
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
