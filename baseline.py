"""The autoregressive baseline of the paper's Table 2: a causal Gaussian mixture density of the images x^0.

    python baseline.py --dataset deadleaves
    python baseline.py --dataset digits --components 8 --out-dir runs

Table 2 sets the diffusion model's K on dead leaves (1.489 bits/pixel) beside the log
likelihood of an autoregressive model of the same images (the MCGSM of Theis et al. 2012:
1.244). Our images come from our own generator, so the comparison is made here, on them.

Units: those of K. The data are x^0 as training and evaluation see them
(experiments.PixelUnits, the paper's dequantisation): 8-bit pixels on [0, 1], one global
shift and scale from the training images (variance 1, Table 1), plus uniform noise of one
8-bit level. K (Eq. 14) is a lower bound on E log p(x^0) per pixel, in bits; the baseline's
figure is its exact E log m(x^0) per pixel, in bits, on the same held-out images: the same
quantity, the one Table 2 compares. Minus L_null = -0.5 log2(2 pi e) (the isotropic unit
Gaussian) it is Table 1's right-hand column, K - L_null.

The model: m(x^0) = prod_i m(x_i | x_<i), pixels in raster order. One Gaussian mixture g
over a pixel and its causal neighbours (NEIGHBOURS) is fitted by maximum likelihood (EM)
on patches of training images; each pixel's conditional is m(x_i | n_i) = g(n_i, x_i) /
g(n_i), n_i its neighbours inside the image (a Gaussian mixture's marginal is the mixture
of its components' marginals). So every conditional, at the borders too, is a normalised
density of x_i, and m a density of x^0: a mixture of linear-Gaussian experts with
Gaussian gating, the MCGSM's form (Theis et al. 2012 fit the conditional; we fit the
joint, which EM does in closed form).

Images of one channel only. Natural logarithms inside, bits at the end.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import os
import sys
import time

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import logsumexp

import cli
import datasets
import experiments
import memory
import provenance
import rundirs
import util

# Causal neighbours, (row, column) offsets: the two pixels to the left, five in the row above
# (two columns either side), three in the row above that (one either side).
NEIGHBOURS = ((0, -1), (0, -2), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2),
              (-2, -1), (-2, 0), (-2, 1))
COVARIANCE_FLOOR = 1e-8  # added to each component's variances; one level's noise has variance ~1.5e-5
EM_S = 5e-7  # seconds per patch and component in one EM iteration: 392 s for 60 of 200,000 x 64 (dead leaves)
EM_TOLERANCE_NATS = 1e-5  # per patch: stop when an EM iteration gains less
CHUNK = 100               # images per vectorised evaluation


# ---------------------------------------------------------------- patches

def patches(x):
    """Images x (n, H, W) -> (n, H, W, len(NEIGHBOURS) + 1): each pixel's causal neighbours
    (NaN outside the image), then the pixel."""
    n, H, W = x.shape
    reach = max(max(abs(dr), abs(dc)) for dr, dc in NEIGHBOURS)
    padded = np.full((n, H + 2 * reach, W + 2 * reach), np.nan)
    padded[:, reach:reach + H, reach:reach + W] = x
    shifted = [padded[:, reach + dr:reach + dr + H, reach + dc:reach + dc + W] for dr, dc in NEIGHBOURS]
    return np.stack(shifted + [x], axis=-1)


def interior_pixels(H, W):
    """The pixels of an H x W image whose neighbours are all inside: the patches it gives."""
    return int((~np.isnan(patches(np.zeros((1, H, W)))).any(axis=-1)).sum())


def interior_patches(x, n_patches, rng):
    """n_patches patches (n_patches, len(NEIGHBOURS) + 1) drawn without replacement from the
    pixels of images x (n, H, W) whose neighbours are all inside."""
    v = patches(x).reshape(-1, len(NEIGHBOURS) + 1)
    v = v[~np.isnan(v).any(axis=1)]
    return v[rng.choice(len(v), min(n_patches, len(v)), replace=False)]


# ---------------------------------------------------------------- the Gaussian mixture g

class Mixture:
    """A Gaussian mixture: log_pi (K,), mu (K, d), cov (K, d, d)."""

    def __init__(self, log_pi, mu, cov):
        self.log_pi, self.mu, self.cov = log_pi, mu, cov

    def component_log_densities(self, v, dims):
        """log N(v; mu_k[dims], cov_k[dims, dims]) of each component, (n, K); v (n, len(dims))."""
        dims = np.asarray(dims)
        out = np.empty((len(v), len(self.log_pi)))
        for k in range(len(self.log_pi)):
            L = np.linalg.cholesky(self.cov[k][np.ix_(dims, dims)])
            z = solve_triangular(L, (v - self.mu[k, dims]).T, lower=True)
            out[:, k] = -0.5 * np.sum(z ** 2, axis=0) - np.log(np.diag(L)).sum() - 0.5 * len(dims) * np.log(2 * np.pi)
        return out

    def log_density(self, v, dims):
        """log g(v), the marginal over dims, (n,)."""
        return logsumexp(self.log_pi + self.component_log_densities(v, dims), axis=1)


def fit_mixture(v, n_components, rng, max_iterations, progress=print):
    """Maximum-likelihood Gaussian mixture of the rows of v (n, d) by EM: means started at
    n_components random rows, covariances at the data's, equal weights; stops when an
    iteration gains less than EM_TOLERANCE_NATS per row. Returns (Mixture, mean log g(v)
    in nats, iterations)."""
    n, d = v.shape
    mu = v[rng.choice(n, n_components, replace=False)]
    cov = np.repeat(np.cov(v.T)[None] + COVARIANCE_FLOOR * np.eye(d), n_components, axis=0)
    g = Mixture(np.full(n_components, -np.log(n_components)), mu, cov)
    dims, last = np.arange(d), -np.inf
    for iteration in range(1, max_iterations + 1):
        joint = g.log_pi + g.component_log_densities(v, dims)  # (n, K)
        log_g = logsumexp(joint, axis=1)
        r = np.exp(joint - log_g[:, None])  # responsibilities
        n_k = r.sum(axis=0) + 1e-12  # a component no patch chose keeps a finite mean
        mu = (r.T @ v) / n_k[:, None]
        for k in range(n_components):
            centred = v - mu[k]
            cov[k] = (r[:, k, None] * centred).T @ centred / n_k[k] + COVARIANCE_FLOOR * np.eye(d)
        g = Mixture(np.log(n_k / n), mu, cov)
        mean = float(log_g.mean())
        if iteration % 10 == 0 or iteration == 1:
            progress('EM iteration {}: {:.4f} bits per patch'.format(iteration, mean / util.LOG2))
        if mean - last < EM_TOLERANCE_NATS:
            break
        last = mean
    return g, mean, iteration


# ---------------------------------------------------------------- the density of x^0

def conditional_log_density(g, p):
    """log m(x_i | n_i) = log g(n_i, x_i) - log g(n_i) of every pixel, (n, H, W) nats, from
    its patches p (n, H, W, len(NEIGHBOURS) + 1) (NaN: outside the image, marginalised)."""
    flat = p.reshape(-1, p.shape[-1])
    inside = ~np.isnan(flat)
    masks, group = np.unique(inside, axis=0, return_inverse=True)
    out = np.empty(len(flat))
    for m, mask in enumerate(masks):  # pixels whose neighbours inside the image are the same
        rows, dims = group.ravel() == m, np.flatnonzero(mask)
        v = flat[np.ix_(rows, dims)]
        out[rows] = g.log_density(v, dims) - (g.log_density(v[:, :-1], dims[:-1]) if len(dims) > 1 else 0.0)
    return out.reshape(p.shape[:-1])


def log_likelihood_bits(g, x0):
    """log m(x^0) per pixel in bits of each image of x0 (n, H, W), (n,)."""
    parts = [conditional_log_density(g, patches(x0[i:i + CHUNK])).mean(axis=(1, 2))
             for i in range(0, len(x0), CHUNK)]
    return np.concatenate(parts) / util.LOG2


def baseline(pixels, fit_x, test_x, n_components, n_patches, max_iterations, seed=0, progress=print):
    """The baseline fitted on fit_x and evaluated on test_x (uint8 (n, 1, H, W)), each
    dequantised afresh in the units `pixels` (PixelUnits). Returns a dict: the test images'
    mean log m(x^0) per pixel in bits with its standard error over images, the same minus
    L_null, the fitted images' mean, and the fit's figures."""
    rng_fit, rng_test = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    x0_fit = pixels.dequantise(fit_x[:, 0], rng_fit)
    v = interior_patches(x0_fit, n_patches, rng_fit)
    progress('Fitting {} components on {} patches of {} images ...'.format(n_components, len(v), len(fit_x)))
    g, patch_nats, iterations = fit_mixture(v, n_components, rng_fit, max_iterations, progress)
    progress('Evaluating on {} test images ...'.format(len(test_x)))
    test_bits = log_likelihood_bits(g, pixels.dequantise(test_x[:, 0], rng_test))
    fit_bits = log_likelihood_bits(g, x0_fit)
    mean = float(test_bits.mean())
    return {'log_likelihood_bits': mean, 'stderr_bits': float(test_bits.std(ddof=1) / np.sqrt(len(test_bits))),
            'minus_Lnull_bits': mean - experiments.L_NULL_BITS_PER_DIM, 'fit_images_bits': float(fit_bits.mean()),
            'n_components': n_components, 'n_patches': len(v), 'em_iterations': iterations,
            'patch_bits': patch_nats / util.LOG2, 'neighbours': [list(o) for o in NEIGHBOURS], 'unit': 'bits/pixel'}


# ---------------------------------------------------------------- command line

def build_parser():
    p = cli.OneLineParser(description=__doc__.split('\n')[0], formatter_class=cli.DefaultsHelpFormatter)
    p.add_argument('--dataset', required=True, help='a grey image set: ' + ', '.join(datasets.IMAGE_SETS))
    p.add_argument('--components', type=int, default=64, help='Gaussians in the mixture')
    p.add_argument('--n-fit', type=int, default=1000, help='training images the patches are drawn from')
    p.add_argument('--patches', type=int, default=200000, help='patches the mixture is fitted on')
    p.add_argument('--em-iterations', type=int, default=200, help='at most this many EM iterations')
    p.add_argument('--data-path', default=None)
    p.add_argument('--out-dir', default='runs', help='where baseline_<dataset>.json goes')
    p.add_argument('--seed', type=int, default=0)
    return p


def check(args):
    """A one-line error for settings that cannot run."""
    for flag, value in (('--components', args.components), ('--n-fit', args.n_fit), ('--patches', args.patches),
                        ('--em-iterations', args.em_iterations)):
        if value < 1:
            cli.fail('{} {}: must be an integer >= 1'.format(flag, value))
    for flag, path in (('--data-path', args.data_path), ('--out-dir', args.out_dir)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            cli.fail('{} {}: is a file, not a folder'.format(flag, path))


def check_fit(args, fit_x):
    """One line and exit 2 for more components than patches to fit them on, or a fit that
    would take over a year; one line with the expected time of a fit over ten minutes."""
    n_patches = min(args.patches, len(fit_x) * interior_pixels(*fit_x.shape[2:]))
    if args.components > n_patches:
        cli.fail('--components {}: the mixture is fitted on {:,} patches (--patches {}, --n-fit {} images); give at '
                 'most that many'.format(args.components, n_patches, args.patches, len(fit_x)))
    refusal, notice = memory.check_time(
        args.em_iterations * EM_S * n_patches * args.components, '--em-iterations {}'.format(args.em_iterations),
        'EM fitting, if it runs every iteration', '{:.0e} s per patch and component in an EM iteration, measured with the defaults'.format(EM_S))
    if refusal:
        cli.fail(refusal)
    if notice:
        print(notice, flush=True)


def load(args):
    """(dataset, model arguments, train, test) as training loads them, or a one-line error."""
    try:
        return experiments.grey_paper_images(args.dataset, args.seed, args.data_path)
    except ValueError as e:  # an unknown name, a missing file, colour images
        cli.fail(str(e))


def main(argv=None):
    args = build_parser().parse_args(argv)
    check(args)
    dataset, _, train_x, test_x = load(args)
    pixels = experiments.PixelUnits.of_images(train_x, 'paper')  # as training and K see them
    fit_x = train_x[np.sort(np.random.default_rng([args.seed, 0]).permutation(len(train_x))[:args.n_fit])]
    check_fit(args, fit_x)
    start, start_cpu = time.time(), time.process_time()
    r = baseline(pixels, fit_x, test_x, args.components, args.patches, args.em_iterations, args.seed,
                 lambda line: print('{} ({:.0f} s)'.format(line, time.time() - start), flush=True))
    r.update(wall_s=time.time() - start, cpu_s=time.process_time() - start_cpu)
    print('{}: log m(x^0) = {:.3f} +- {:.3f} bits/pixel on {} test images (minus L_null: {:.3f}; '
          'fitted images {:.3f}; {:.0f} s)'.format(dataset, r['log_likelihood_bits'], r['stderr_bits'], len(test_x),
                                                   r['minus_Lnull_bits'], r['fit_images_bits'], r['wall_s']))
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, 'baseline_{}.json'.format(dataset))
    command = 'python baseline.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    rundirs.write_json(path, dict(r, dataset=dataset, image_shape=list(train_x.shape[1:]), n_fit=len(fit_x),
                               n_test=len(test_x), seed=args.seed, shift=pixels.shift, scale=pixels.scale,
                               command=command, environment=provenance.environment()))
    print('Written to {}'.format(path))
    return r


if __name__ == '__main__':
    main()
