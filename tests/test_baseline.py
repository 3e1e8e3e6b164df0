"""The autoregressive baseline (baseline.py): every conditional a normalised density, the
exact log likelihood of a known Gaussian process recovered, the command and its errors."""
import json

import numpy as np
import pytest
from scipy import stats

import baseline as B
import datasets
import experiments


@pytest.fixture(scope='module')
def fitted_on_dead_leaves():
    """A mixture fitted on tiny dequantised dead-leaves images, and those images (n, 8, 8)."""
    images = datasets.deadleaves(40, size=8, seed=3)
    pixels = experiments.PixelUnits.of_images(images, 'paper')
    rng = np.random.default_rng(0)
    x0 = pixels.dequantise(images[:, 0], rng)
    g, _, _ = B.fit_mixture(B.interior_patches(x0, 2000, rng), 4, rng, 50, progress=lambda line: None)
    return g, x0


@pytest.mark.parametrize('row, col', [(0, 0), (0, 1), (0, 5), (1, 0), (1, 7), (2, 3), (5, 7), (7, 7)])
def test_each_conditional_integrates_to_one_at_the_borders_too(row, col, fitted_on_dead_leaves):
    g, x0 = fitted_on_dead_leaves
    sweep = np.linspace(-8, 8, 4001)  # densities here peak at 2.6 at most: steps of 0.004 integrate to 1e-6
    images = np.repeat(x0[:1], len(sweep), axis=0)
    images[:, row, col] = sweep
    density = np.exp(B.conditional_log_density(g, B.patches(images))[:, row, col])
    assert np.trapz(density, sweep) == pytest.approx(1, abs=1e-3)


def ar_rows(rng, n, size, a, sigma):
    """Images whose rows are independent stationary AR(1) processes along the columns, and
    each image's exact log density per pixel in bits."""
    x = np.empty((n, size, size))
    x[:, :, 0] = rng.normal(0, sigma / np.sqrt(1 - a ** 2), (n, size))
    for j in range(1, size):
        x[:, :, j] = a * x[:, :, j - 1] + rng.normal(0, sigma, (n, size))
    log_p = (stats.norm.logpdf(x[:, :, 0], 0, sigma / np.sqrt(1 - a ** 2)).sum(axis=1)
             + stats.norm.logpdf(x[:, :, 1:] - a * x[:, :, :-1], 0, sigma).sum(axis=(1, 2)))
    return x, log_p / (size * size * np.log(2))


def test_recovers_the_exact_log_likelihood_of_a_gaussian_process():
    rng = np.random.default_rng(1)
    train, _ = ar_rows(rng, 300, 8, 0.9, 0.1)
    test, exact_bits = ar_rows(rng, 200, 8, 0.9, 0.1)
    g, _, _ = B.fit_mixture(B.interior_patches(train, 20000, rng), 1, rng, 20, progress=lambda line: None)
    bits = B.log_likelihood_bits(g, test)
    assert np.abs(bits - exact_bits).max() < 0.05  # per image: 64 pixels
    assert bits.mean() == pytest.approx(exact_bits.mean(), abs=0.005)
    assert exact_bits.mean() > 0  # far above the isotropic unit Gaussian's -0.5 log2(2 pi e) = -2.05


def test_patches_hold_the_causal_neighbours_then_the_pixel():
    x = np.arange(20.0).reshape(1, 4, 5)
    p = B.patches(x)
    assert p[0, 2, 3, -1] == x[0, 2, 3]
    for k, (dr, dc) in enumerate(B.NEIGHBOURS):
        assert p[0, 2, 2, k] == x[0, 2 + dr, 2 + dc]
        assert dr < 0 or (dr == 0 and dc < 0)  # causal in raster order
    assert np.isnan(p[0, 0, 0, :-1]).all()
    assert not np.isnan(p[0, 3, 2]).any()


def test_command_on_the_digits(tmp_path):
    r = B.main(['--dataset', 'Digits', '--components', '3', '--patches', '3000', '--em-iterations', '5',
                '--out-dir', str(tmp_path)])
    saved = json.loads((tmp_path / 'baseline_digits.json').read_text())
    assert saved['log_likelihood_bits'] == pytest.approx(r['log_likelihood_bits'])
    assert saved['n_test'] == 297 and saved['em_iterations'] == 5 and saved['stderr_bits'] > 0
    assert saved['minus_Lnull_bits'] == pytest.approx(r['log_likelihood_bits'] + 0.5 * np.log2(2 * np.pi * np.e))
    assert saved['command'].startswith('python baseline.py --dataset Digits')


@pytest.mark.parametrize('argv, message', [
    (['--dataset', 'swissroll'], '--dataset: unknown data set'),
    (['--dataset', 'digits', '--components', '0'], '--components 0: must be an integer >= 1'),
    (['--dataset', 'digits', '--patches', 'many'], 'invalid int value'),
    (['--dataset', 'digits', '--components', '1000000000000'],  # 1,000 images x 24 interior pixels
     '--components 1000000000000: the mixture is fitted on 24,000 patches (--patches 200000, --n-fit 1000 images)'),
    (['--dataset', 'digits', '--em-iterations', '1000000000000'], '--em-iterations 1000000000000: about '),
])
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        B.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_long_fit_says_how_long_before_it_starts(capsys):
    args = B.build_parser().parse_args(['--dataset', 'digits', '--em-iterations', '100000'])
    B.check_fit(args, np.zeros((1000, 1, 8, 8), np.uint8))  # 24,000 patches x 64 components x 100,000 iterations
    assert capsys.readouterr().out == ('--em-iterations 100000: about 21 h of EM fitting, if it runs every iteration '
                                       '(5e-07 s per patch and component in an EM iteration, measured with the '
                                       'defaults)\n')
