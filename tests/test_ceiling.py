"""The ceiling that b_1 puts on K (ceiling.py): the noise of one pixel given its level, the
causal region mixture as a density, and the two limits against data whose answer is known."""
import json
import os

import numpy as np
import pytest
from scipy import integrate, stats

import ceiling as C
import datasets
import experiments


def pixel_units(images):
    return experiments.PixelUnits.of_images(images, 'paper')


def test_level_density_is_a_density_with_the_right_entropy_limits():
    for width, sigma in ((0.0136, 0.0316), (0.0136, 0.001), (0.05, 0.01)):
        total, _ = integrate.quad(lambda y: C.level_density(y, width, sigma), -20 * sigma, width + 20 * sigma,
                                  points=(0, width), limit=200)
        assert total == pytest.approx(1, abs=1e-9)
        direct = stats.norm.cdf(0.3 * width / sigma) - stats.norm.cdf((0.3 * width - width) / sigma)
        assert C.level_density(0.3 * width, width, sigma) == pytest.approx(direct / width, rel=1e-9)
    # noise much narrower than a level: the uniform's log width; much wider: the Gaussian's
    assert C.level_noise_entropy(0.0136, 1e-6) == pytest.approx(np.log(0.0136), abs=1e-3)
    assert C.level_noise_entropy(1e-6, 0.0316) == pytest.approx(0.5 * np.log(2 * np.pi * np.e * 0.0316 ** 2), abs=1e-6)


def test_each_conditional_of_the_mixture_integrates_to_one():
    # 2x3 images: five pixels seen (two regions), the sixth swept over every value it can take
    rng = np.random.default_rng(0)
    pixels = pixel_units(rng.integers(0, 256, (50, 1, 2, 3)).astype(np.uint8))
    beta_1 = 1e-3
    grid = C.LevelGrid(pixels, beta_1, C.level_prior(rng.integers(0, 256, 1000)))
    a, b = pixels.zscore(40), pixels.zscore(200)
    sweep = np.linspace(grid.low[0] - 0.3, grid.low[-1] + 0.3, 8001)
    x1 = np.empty((len(sweep), 2, 3))
    x1[:, 0], x1[:, 1, :2] = [a, a, b], [a, b]
    x1[:, :, :] += 0.01 * np.array([[0.3, -1.0, 0.5], [1.2, -0.4, 0.0]])
    x1[:, 1, 2] = sweep
    fit_x = C.first_step(pixels.dequantise(rng.integers(0, 256, (300, 2, 3)), rng), beta_1, rng)
    fitted = C.fit_weights(*C.causal_pass(fit_x, grid, C.MixtureWeights()))
    for weights in (C.MixtureWeights(), fitted):
        codes, log_f = C.causal_pass(x1, grid, weights)
        density = np.exp(C.log_density_nats(codes, log_f, weights)[:, 5])
        assert np.trapz(density, sweep) == pytest.approx(1, abs=1e-4)


def iid_images(rng, n, level_probs):
    return rng.choice(256, size=(n, 1, 8, 8), p=level_probs).astype(np.uint8)


def test_recovers_the_entropy_of_iid_pixels():
    # pixels i.i.d. with a known distribution of 8-bit levels (a discretised Gaussian): x^1 has
    # the density sum_k p_k q(x | k), so -h(x^1) per pixel is one integral
    edges = np.arange(257) - 0.5
    cdf = stats.norm.cdf(edges, 128, 20)
    cdf[0], cdf[-1] = 0, 1
    p = np.diff(cdf)
    rng = np.random.default_rng(1)
    train, test = iid_images(rng, 1000, p), iid_images(rng, 300, p)
    pixels, beta_1 = pixel_units(train), 1e-3
    s, sigma = np.sqrt(1 - beta_1), np.sqrt(beta_1)
    low = s * pixels.zscore(np.arange(256))
    x = np.linspace(low[0] - 10 * sigma, low[-1] + s * pixels.width + 10 * sigma, 40001)
    density = np.zeros_like(x)
    for k in np.flatnonzero(p > 1e-12):
        density += p[k] * (stats.norm.cdf((x - low[k]) / sigma)
                           - stats.norm.cdf((x - low[k] - s * pixels.width) / sigma)) / (s * pixels.width)
    truth_bits = np.trapz(density * np.log2(np.maximum(density, 1e-300)), x)
    variance = (1 - beta_1) * (1 + pixels.width ** 2 / 12) + beta_1
    assert truth_bits == pytest.approx(-0.5 * np.log2(2 * np.pi * np.e * variance), abs=0.01)  # nearly Gaussian
    lower, stderr, _ = C.ceiling_lower_bits(train, test, pixels, beta_1)
    assert 0 < stderr < 0.02
    assert abs(lower - truth_bits) < 3 * stderr
    assert C.ceiling_upper_bits(pixels, beta_1)[0] > truth_bits + 1  # conditioning on the levels


def test_nearly_tight_on_flat_images_and_never_above_the_upper_limit():
    # one grey level per image: all but the first pixel are noisy copies, the easiest data
    rng = np.random.default_rng(2)
    flat = np.repeat(rng.integers(0, 256, (400, 1, 1, 1)), 16, axis=2).repeat(16, axis=3).astype(np.uint8)
    pixels = pixel_units(flat[:300])
    for beta_1 in (1e-2, 1e-4):
        lower, stderr, _ = C.ceiling_lower_bits(flat[:300], flat[300:], pixels, beta_1)
        upper, upper_gaussian = C.ceiling_upper_bits(pixels, beta_1)
        assert lower < upper <= upper_gaussian
        # the gap: the first pixel's level (about 8 bits) and learning the level, over 256 pixels
        assert upper - lower < 0.15


@pytest.mark.slow  # fits the mixture on dead leaves
def test_rises_as_beta_1_falls_on_dead_leaves():
    images = datasets.deadleaves(300, size=16, seed=3)
    pixels = pixel_units(images[:200])
    limits = [C.ceiling_lower_bits(images[:200], images[200:], pixels, b) for b in (1e-2, 1e-3, 1e-4)]
    for (low, err, _), (higher, err2, _) in zip(limits, limits[1:]):
        assert higher - low > 3 * np.hypot(err, err2)
    uppers = [C.ceiling_upper_bits(pixels, b)[0] for b in (1e-2, 1e-3, 1e-4)]
    assert all(l[0] < u for l, u in zip(limits, uppers))


def test_bracket_is_below_a_thousandth_of_a_bit_at_the_harmonic_A_T():
    images = np.random.default_rng(4).integers(0, 256, (100, 1, 8, 8)).astype(np.uint8)
    A_T = C.harmonic_A_T(1e-3, 1000)
    assert A_T == pytest.approx(1e-3, rel=0.01)
    low, high = C.bracket_bits(A_T, pixel_units(images), images)
    assert -1e-3 < low < 0 < high < 1e-6


@pytest.mark.slow  # fits the mixture on the digits
def test_command_on_the_digits(tmp_path):
    results = C.main(['--dataset', 'Digits', '--beta-1', '1e-3,1e-4', '--n-fit', '200', '--out-dir', str(tmp_path)])
    with open(os.path.join(tmp_path, 'ceiling_digits.json')) as f:
        written = json.load(f)
    assert written['ceilings'] == pytest.approx(results)
    assert written['command'].startswith('python ceiling.py --dataset Digits')
    for r in results:
        # above the N(0, I) model of the data (-2.05 bits/pixel), below the upper limit
        assert -0.5 * np.log2(2 * np.pi * np.e) < r['lower_bits'] < r['upper_bits'] < r['upper_gaussian_bits']
    assert results[1]['lower_bits'] > results[0]['lower_bits']


@pytest.mark.parametrize('argv, message', [
    (['--dataset', 'digits', '--beta-1', '0'], 'in (0, 1)'),
    (['--dataset', 'digits', '--beta-1', '1e-3,x'], 'numbers separated by commas'),
    (['--dataset', 'digits', '--n-fit', '0'], '--n-fit 0'),
    (['--dataset', 'nosuchset'], '--dataset'),
    (['--dataset', 'deadleaves', '--data-path', __file__], '--data-path'),
    (['--dataset', 'digits', '--out-dir', __file__], '--out-dir'),
])
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        C.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1
