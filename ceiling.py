"""The ceiling that the forward process's first step b_1 puts on the bound K (Eq. 14).

    python ceiling.py --dataset deadleaves --beta-1 1e-3,1e-4,1e-5
    python ceiling.py --dataset digits --beta-1 1e-3 --out-dir runs

For each b_1 it prints and writes (OUT_DIR/ceiling_<dataset>.json) two limits, in bits per
pixel, on the largest K that any reverse process could reach on the data, in the units
training uses (experiments.PixelUnits: 8-bit pixels on [0, 1], one global shift and scale
from the training images, uniform dequantisation noise of one 8-bit bin).

What is bounded. K of Eq. 14, with Appendix B.2's edge treatment, per data vector in nats:

    K = - sum_{t=2}^T E_q KL(q(x^{t-1} | x^t, x^0) || p(x^{t-1} | x^t))
        + H_q(X^T | X^0) - H_q(X^1 | X^0) - H_p(X^T).

For each t the expected KL is smallest when p(x^{t-1} | x^t) is the true reverse
q(x^{t-1} | x^t), and it is then the conditional mutual information
I(X^{t-1}; X^0 | X^t) = [h(X^{t-1}) - h(X^t)] - [h(X^{t-1} | X^0) - h(X^t | X^0)] (the forward
process is Markov). The sum over t telescopes, and the conditional entropies cancel
against the edge terms:

    K <= K_max = -h(X^1) + [h(X^T) - H_p(X^T)],

h the differential entropy of x^1 = sqrt(1 - b_1) x^0 + sqrt(b_1) noise, x^0 the dequantised
data. Only b_1 (through x^1) and A_T (through x^T) enter; b_2 .. b_{T-1} and the network do
not. The bracket is tiny: h(X^T) >= h(X^T | X^0) gives [.] >= D/2 log(1 - A_T), and the
Gaussian of x^T's second moment gives [.] <= D/2 log(1 + A_T (m_2 - 1)), m_2 the mean square
of x^0 per dimension (1 + w^2/3 for z-scored data with dequantisation U(0, w)). At the
A_T of the harmonic schedule (1e-3 at T = 1000) both are below 0.001 bits/pixel.

The two limits on K_max per pixel:

- upper (ceiling_upper_bits): conditioning reduces entropy, so h(X^1) >= h(X^1 | 8-bit image)
  = D h(sqrt(1 - b_1) w u + sqrt(b_1) noise), u ~ U(0, 1): the ceiling is at most minus that
  entropy, and so at most -0.5 log2(2 pi e b_1) (conditioning on the dequantised x^0 instead).
- lower (ceiling_lower_bits): for any normalised density m of x^1, E log m(x^1) <= -h(X^1)
  (cross-entropy >= entropy). m is a causal region mixture (causal_pass) whose few
  weights are fitted by maximum likelihood on training images; its mean log density on
  held-out images, with a standard error over images, says "the ceiling is at least X".
  The estimate is only as good as m: it is a bound, never the ceiling itself.

Images of one channel only. Natural logarithms inside, bits at the end.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import argparse
import os
import sys
import time

import numpy as np
from scipy import integrate
from scipy.special import logsumexp, ndtr

import cli
import datasets
import experiments
import model as M
import provenance
import rundirs
import util

N_LEVELS = 256  # 8-bit pixels
# Causal neighbours in raster order, (row, column) offsets: W, NW, N, NE, WW, NEE. Each is a
# candidate region for the next pixel, and the pattern of which of them share a region is
# the mixture's context.
NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, -2), (-1, 2))
PSEUDO_COUNT = 0.5         # Dirichlet prior of each context's mixture weights
EM_ITERATIONS = 100
EM_TOLERANCE_NATS = 1e-6   # per pixel; about 20 iterations on dead leaves, within 1e-5 bits of the optimum
BAND_SIGMAS = 10           # LevelGrid.band: levels within 10 noise standard deviations
CHUNK = 1000               # images per vectorised pass (memory: CHUNK x (W + 2) x 256 float64)


# ---------------------------------------------------------------- one pixel given its level

def level_density(y, width, sigma):
    """Density at y of width u + sigma eps, u ~ U(0, 1), eps ~ N(0, 1): what the dequantisation
    and the first forward step add to a pixel's 8-bit level. Symmetric about width / 2, and
    evaluated on the side where both normal tails are small (no cancellation)."""
    near = 0.5 * width - np.abs(np.asarray(y, np.float64) - 0.5 * width)  # <= width / 2
    return (ndtr(near / sigma) - ndtr((near - width) / sigma)) / width


def level_noise_entropy(width, sigma):
    """h(width u + sigma eps) in nats (the density of level_density), by quadrature."""
    def integrand(y):
        g = level_density(y, width, sigma)
        return -g * np.log(g) if g > 0 else 0.0
    reach = width + 12 * sigma
    value, _ = integrate.quad(integrand, -12 * sigma, reach, points=(0.0, width), limit=500,
                              epsabs=1e-12, epsrel=1e-10)
    return value


class LevelGrid:
    """x^1 of a pixel of 8-bit level k: sqrt(1 - b_1) (c_k + w u) + sqrt(b_1) eps, c_k the level
    in model units, u ~ U(0, 1) (U(-1/2, 1/2) for the released code's centred noise), so its
    density is level_density(x - low_k, width, sigma) with width = sqrt(1 - b_1) w.
    Adjacent levels are `spacing` apart in x^1 (= width for the paper's dequantisation).
    prior: the levels' probabilities (N_LEVELS,).

    Only the n_band levels around x are evaluated (band): those whose uniform part is within
    BAND_SIGMAS noise deviations of x. The density of the others, below 1e-22 of the peak,
    is taken as 0, which leaves every mixture component a little below 1 in total: the
    lower limit can only fall by it.
    """

    def __init__(self, pixels, beta_1, prior):
        s = np.sqrt(1 - beta_1)
        self.low = s * (pixels.zscore(np.arange(N_LEVELS)) - (0.5 * pixels.width if pixels.centred else 0.0))
        self.width, self.spacing, self.sigma = s * pixels.width, s * pixels.level_spacing, np.sqrt(beta_1)
        self.prior = np.asarray(prior, np.float64)
        reach = self.width + 2 * BAND_SIGMAS * self.sigma
        self.n_band = min(N_LEVELS, int(np.ceil(reach / self.spacing)) + 3)

    def band(self, x):
        """(n,) values of x^1 -> (levels, density): the n_band consecutive levels around each
        value, (n, n_band) int, and its density under each, (n, n_band)."""
        nearest = np.floor((x - self.low[0] - 0.5 * self.width) / self.spacing + 0.5).astype(np.int64)
        start = np.minimum(np.maximum(nearest - self.n_band // 2, 0), N_LEVELS - self.n_band)
        levels = start[:, None] + np.arange(self.n_band)
        return levels, level_density(x[:, None] - self.low[levels], self.width, self.sigma)


def level_prior(train_x):
    """Probabilities of the 8-bit levels in the training images, plus one count each."""
    counts = np.bincount(np.asarray(train_x, np.uint8).ravel(), minlength=N_LEVELS) + 1.0
    return counts / counts.sum()


def first_step(x0, beta_1, rng):
    """x^1 ~ q(x^1 | x^0) = N(sqrt(1 - b_1) x^0, b_1 I)."""
    return np.sqrt(1 - beta_1) * x0 + np.sqrt(beta_1) * rng.standard_normal(x0.shape)


# ---------------------------------------------------------------- the causal region mixture

def neighbour_index(H, W):
    """(H W, len(NEIGHBOURS)) flat index of each causal neighbour of each pixel, -1 outside."""
    r, c = np.divmod(np.arange(H * W), W)
    out = np.empty((H * W, len(NEIGHBOURS)), np.int64)
    for p, (dr, dc) in enumerate(NEIGHBOURS):
        inside = (r + dr >= 0) & (c + dc >= 0) & (c + dc < W)
        out[:, p] = np.where(inside, (r + dr) * W + c + dc, -1)
    return out


def pattern_code(labels):
    """(n, P) region labels of the neighbours (-1: outside) -> (n,) the context: digit p (base
    P + 1) is the first neighbour with p's region, P for a neighbour outside the image."""
    n_nb = labels.shape[1]
    first = np.argmax(labels[:, :, None] == labels[:, None, :], axis=2)
    first = np.where(labels >= 0, first, n_nb)
    return first @ (n_nb + 1) ** np.arange(n_nb)


def valid_components(codes):
    """(n,) contexts -> (n, n_nb + 1) bool: component p < n_nb (the region of neighbour p) exists
    where p is the first neighbour in its region; the last (a new region) always."""
    n_nb = len(NEIGHBOURS)
    digits = (np.asarray(codes)[:, None] // (n_nb + 1) ** np.arange(n_nb)) % (n_nb + 1)
    return np.concatenate([digits == np.arange(n_nb), np.ones((len(digits), 1), bool)], axis=1)


class MixtureWeights:
    """The causal mixture's weights: for each context (pattern_code) a distribution over its
    valid components, log_pi (len(codes), n_nb + 1), -inf on invalid ones. Contexts not given
    get uniform weights over their valid components; the default gives none."""

    def __init__(self, codes=(), log_pi=None):
        n_nb = len(NEIGHBOURS)
        valid = valid_components(np.arange((n_nb + 1) ** n_nb))
        self.table = np.where(valid, -np.log(valid.sum(axis=1, keepdims=True)), -np.inf)  # every context
        if log_pi is not None:
            self.table[np.asarray(codes)] = log_pi

    def log_weights(self, codes):
        """(...) contexts -> (..., n_nb + 1) log weights, -inf on invalid components."""
        return self.table[codes]


def causal_pass(x1, grid, weights):
    """One raster-order pass over images x1 (n, H, W): per pixel its context (n, H W) and the
    density of its value under each mixture component (n, H W, n_nb + 1), float32 logs
    (meaningless for a component its context makes invalid, whose weight is 0).

    The model m(x^1) = prod_i m(x_i | x_<i). Pixels are grouped in regions of one 8-bit grey
    level (the data's disks): each region holds the posterior of its level given its pixels
    so far (LevelGrid, prior the level frequencies). Component p predicts x_i as a pixel of
    the region of causal neighbour p, by that posterior (the Bayes predictive of a flat
    region: noisy copies averaged, the quantisation grid used); the last component is a new
    region (its level from the prior). After x_i is seen it joins the region of its most
    probable component (weights x density). Every decision is a function of pixels already
    seen, so each m(x_i | x_<i) is a normalised density and m a density of x^1. (Merging two
    neighbouring regions when one level explains both better than two did not raise the
    dead-leaves limit: 1.490 against 1.493 bits/pixel without, b_1 = 1e-3, 200 test images;
    it raised the digits' from 0.243 to 0.300, which are not made of flat regions.)
    """
    n, H, W = x1.shape
    x = x1.reshape(n, H * W)
    index = neighbour_index(H, W)
    back = int(np.max(-(np.array(NEIGHBOURS) @ [W, 1])))  # farthest neighbour, in raster steps
    n_slots = back + 1  # live regions: at most those of the last `back` pixels, and a new one
    rows = np.arange(n)
    labels = np.zeros((n, H * W), np.int64)  # region slot of each pixel
    refs = np.zeros((n, n_slots), np.int64)  # pixels of the window in each slot; 0 = free
    post = np.zeros((n, n_slots, N_LEVELS))  # each region's posterior over levels
    codes = np.empty((n, H * W), np.int64)
    log_f = np.empty((n, H * W, len(NEIGHBOURS) + 1), np.float32)
    with np.errstate(divide='ignore'):
        for i in range(H * W):
            if i > back:  # pixel i - back - 1 is nobody's neighbour any more
                refs[rows, labels[:, i - back - 1]] -= 1
            inside = index[i] >= 0
            nb = np.where(inside, labels[:, np.maximum(index[i], 0)], -1)  # (n, n_nb)
            codes[:, i] = pattern_code(nb)
            log_w = weights.log_weights(codes[:, i])
            levels, g = grid.band(x[:, i])  # (n, n_band)
            band = post[rows[:, None, None], np.maximum(nb, 0)[:, :, None], levels[:, None, :]]  # (n, n_nb, n_band)
            f = np.concatenate([np.einsum('npl,nl->np', band, g), (g * grid.prior[levels]).sum(1, keepdims=True)], 1)
            log_f[:, i] = np.log(f)
            choice = np.argmax(log_w + np.log(f), axis=1)
            new = choice == len(NEIGHBOURS)
            old = np.minimum(choice, len(NEIGHBOURS) - 1)
            slot = np.where(new, np.argmax(refs == 0, axis=1), nb[rows, old])
            joined = np.where(new[:, None], grid.prior[levels], band[rows, old]) * g
            post[rows, slot] = 0.0
            post[rows[:, None], slot[:, None], levels] = joined / joined.sum(axis=1, keepdims=True)
            labels[:, i], refs[rows, slot] = slot, refs[rows, slot] + 1
    return codes, log_f


def chunked_pass(x1, grid, weights):
    """causal_pass over CHUNK images at a time."""
    parts = [causal_pass(x1[i:i + CHUNK], grid, weights) for i in range(0, len(x1), CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def log_density_nats(codes, log_f, weights):
    """log m(x_i | x_<i) of every pixel, (n, H W): the mixture of the components' densities."""
    return logsumexp(weights.log_weights(codes) + log_f, axis=-1)


def fit_weights(codes, log_f):
    """Maximum-likelihood mixture weights of each context by EM on the components' densities
    of one pass (fixed), with PSEUDO_COUNT per valid component."""
    contexts, inverse = np.unique(codes.ravel(), return_inverse=True)
    log_f = log_f.reshape(-1, log_f.shape[-1]).astype(np.float64)
    valid = valid_components(contexts)
    log_pi = MixtureWeights().log_weights(contexts)
    last = -np.inf
    for _ in range(EM_ITERATIONS):
        joint = log_pi[inverse] + log_f
        log_m = logsumexp(joint, axis=1, keepdims=True)
        counts = np.stack([np.bincount(inverse, np.exp(joint[:, c] - log_m[:, 0]), len(contexts))
                           for c in range(log_f.shape[1])], axis=1) + np.where(valid, PSEUDO_COUNT, 0.0)
        with np.errstate(divide='ignore'):
            log_pi = np.log(counts / counts.sum(axis=1, keepdims=True))
        mean = float(log_m.mean())
        if mean - last < EM_TOLERANCE_NATS:
            break
        last = mean
    return MixtureWeights(contexts, log_pi)


# ---------------------------------------------------------------- the two limits

def ceiling_upper_bits(pixels, beta_1):
    """Upper limits on -h(X^1) per pixel, bits: (-h(X^1 | 8-bit image), -h(X^1 | X^0) =
    -0.5 log2(2 pi e b_1)); the first is the tighter. See the module's docstring."""
    width = np.sqrt(1 - beta_1) * pixels.width
    return (-level_noise_entropy(width, np.sqrt(beta_1)) / util.LOG2, -0.5 * np.log2(2 * np.pi * np.e * beta_1))


def ceiling_lower_bits(train_x, test_x, pixels, beta_1, seed=0, fit_passes=2):
    """A lower limit on -h(X^1) per pixel, bits: the causal region mixture (causal_pass)
    fitted on train_x (uint8 (n, 1, H, W)) and evaluated on test_x, x^1 drawn afresh for each.
    Returns (mean over test images, its standard error over images, the training images'
    mean). The first pass over the training images decides regions with uniform weights;
    each further pass with the weights fitted on the one before."""
    grid = LevelGrid(pixels, beta_1, level_prior(train_x))

    def x1_of(x, stream):
        rng = np.random.default_rng([seed, stream])
        return first_step(pixels.dequantise(x[:, 0], rng), beta_1, rng)

    x1_train, weights = x1_of(train_x, 1), MixtureWeights()
    for _ in range(fit_passes):
        codes, log_f = chunked_pass(x1_train, grid, weights)
        weights = fit_weights(codes, log_f)
    train_bits = log_density_nats(codes, log_f, weights).mean(axis=1) / util.LOG2
    test_bits = log_density_nats(*chunked_pass(x1_of(test_x, 2), grid, weights), weights).mean(axis=1) / util.LOG2
    return float(test_bits.mean()), float(test_bits.std(ddof=1) / np.sqrt(len(test_bits))), float(train_bits.mean())


def bracket_bits(A_T, pixels, x):
    """Limits on [h(X^T) - H_p(X^T)] per pixel, bits: (0.5 log2(1 - A_T), 0.5 log2(1 + A_T
    (m_2 - 1))), m_2 the mean square per pixel of the dequantised images x (uint8), exact in
    the dequantisation noise."""
    z, w = pixels.zscore(x), pixels.width
    shift = -0.5 if pixels.centred else 0.0
    m_2 = np.mean(z ** 2) + 2 * w * (0.5 + shift) * np.mean(z) + w ** 2 * (1 / 12 + (0.5 + shift) ** 2)
    return 0.5 * np.log2(1 - A_T), 0.5 * np.log2(1 + A_T * (m_2 - 1))


def harmonic_A_T(beta_1, T_steps):
    """A_T of the images' starting schedule (the harmonic baseline with b_1 replaced)."""
    beta = M.harmonic_beta(T_steps)
    beta[0] = beta_1
    return float(np.exp(M.log_alpha_bar(beta)[-1]))


def ceiling(pixels, fit_x, test_x, beta_1, T_steps, seed=0, fit_passes=2):
    """Both limits on the ceiling K_max of Eq. 14 (Appendix B.2 edges) per pixel, bits, at b_1,
    the bracket included (module docstring): the mixture fitted on fit_x and evaluated on test_x (uint8 (n, 1, H, W)) in the units `pixels`
    (PixelUnits); A_T from the harmonic schedule of T_steps."""
    lower, stderr, train = ceiling_lower_bits(fit_x, test_x, pixels, beta_1, seed, fit_passes)
    upper, upper_gaussian = ceiling_upper_bits(pixels, beta_1)
    A_T = harmonic_A_T(beta_1, T_steps)
    low_bracket, high_bracket = bracket_bits(A_T, pixels, test_x)
    return {'beta_1': beta_1, 'lower_bits': lower + low_bracket, 'lower_stderr_bits': stderr,
            'upper_bits': upper + high_bracket, 'upper_gaussian_bits': upper_gaussian + high_bracket,
            'minus_h_x1_lower_bits': lower, 'minus_h_x1_train_bits': train,
            'minus_h_x1_upper_bits': upper, 'bracket_bits': [low_bracket, high_bracket], 'A_T': A_T}


# ---------------------------------------------------------------- command line

def parse_betas(text):
    try:
        betas = [float(b) for b in text.split(',') if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError('takes numbers separated by commas, e.g. 1e-3,1e-4')
    if not betas or not all(0 < b < 1 for b in betas):
        raise argparse.ArgumentTypeError('{}: every b_1 must be in (0, 1)'.format(text))
    return betas


def build_parser():
    p = cli.OneLineParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', required=True, help='a grey image set: ' + ', '.join(datasets.IMAGE_SETS))
    p.add_argument('--beta-1', type=parse_betas, default=[1e-3], help='b_1 values, e.g. 1e-3,1e-4')
    p.add_argument('--data-path', default=None)
    p.add_argument('--out-dir', default='runs', help='where ceiling_<dataset>.json goes (default runs)')
    p.add_argument('--n-fit', type=int, default=500, help='training images the weights are fitted on')
    p.add_argument('--seed', type=int, default=0)
    return p


def load(args):
    """(dataset, model arguments, train, test) as training loads them, or a one-line error."""
    try:
        return experiments.grey_paper_images(args.dataset, args.seed, args.data_path)
    except ValueError as e:  # an unknown name, a missing file, colour images
        cli.fail(str(e))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.n_fit < 1:
        cli.fail('--n-fit {}: must be an integer >= 1'.format(args.n_fit))
    for flag, path in (('--data-path', args.data_path), ('--out-dir', args.out_dir)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            cli.fail('{} {}: is a file, not a folder'.format(flag, path))
    dataset, config, train_x, test_x = load(args)
    pixels = experiments.PixelUnits.of_images(train_x, config['dequantisation'])  # as training does
    fit_x = train_x[np.sort(np.random.default_rng([args.seed, 0]).permutation(len(train_x))[:args.n_fit])]
    start, start_cpu = time.time(), time.process_time()
    results = []
    for beta_1 in args.beta_1:
        wall, cpu = time.time(), time.process_time()
        r = ceiling(pixels, fit_x, test_x, beta_1, config['T'], args.seed)
        r.update(wall_s=time.time() - wall, cpu_s=time.process_time() - cpu)
        results.append(r)
        print('b_1 = {:g}: {:.3f} +- {:.3f} <= ceiling on K <= {:.3f} bits/pixel '
              '(-0.5 log2(2 pi e b_1) = {:.3f}; {:.0f} s)'.format(
                  beta_1, r['lower_bits'], r['lower_stderr_bits'], r['upper_bits'], r['upper_gaussian_bits'],
                  r['wall_s']), flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, 'ceiling_{}.json'.format(dataset))
    command = 'python ceiling.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    rundirs.write_json(path, {'dataset': dataset, 'image_shape': list(train_x.shape[1:]), 'n_fit': len(fit_x),
                           'n_test': len(test_x), 'seed': args.seed, 'ceilings': results,
                           'wall_s': time.time() - start, 'cpu_s': time.process_time() - start_cpu,
                           'command': command, 'environment': provenance.environment()})
    print('Written to {} ({:.0f} s)'.format(path, time.time() - start))
    return results


if __name__ == '__main__':
    main()
