"""sampler.py: reverse sampling, inpainting, denoising, Eq. 61, checkpoints and the command line."""
import os
import subprocess
import sys

import numpy as np
import pytest
import theano
import theano.tensor as T

import checkpoints
import datasets
import experiments
import extensions
import figures
import model as M
import presets
import reverse
import sampler
from conftest import TINY_IMAGE_ARGS

pytestmark = pytest.mark.slow  # compiles and samples small models (python -m pytest -m "not slow" leaves it out)

floatX = theano.config.floatX
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_ROLL = dict(n_train=500, n_eval=200)


@pytest.fixture
def image_exp(stand_in_images):
    """A tiny CIFAR-shaped (3 x 4 x 4) image Experiment on random stand-in images."""
    images = stand_in_images(300, 20, (3, 4, 4))
    return experiments.from_arrays('CIFAR10', presets.model_args('CIFAR10', 'paper', TINY_IMAGE_ARGS), 0,
                                   images['train'], images['test'])


def roll_exp(fidelity='paper'):
    return experiments.build('swissroll', presets.model_args('swissroll', fidelity, SMALL_ROLL), 0)


# ---------------------------------------------------------------- inpainting

def test_inpainting_keeps_known_pixels_exactly(image_exp):
    r = reverse.run(image_exp, 'inpaint', n=6, mask='centre', n_frames=5)
    mask = r['mask']
    assert mask.shape == r['samples'].shape and mask.any() and not mask.all()
    assert not mask[:, :, 1:3, 1:3].any() and mask[:, :, 0].all()  # the centred 2x2 is unknown
    assert np.array_equal(r['samples'][mask], r['original'][mask])  # bit-identical, data units
    for frame in r['frames']:
        assert np.array_equal(frame[mask], r['original'][mask])
    assert not np.allclose(r['samples'][~mask], r['original'][~mask], atol=1e-3)
    # in model units too, at x^T and after every step
    known = reverse.to_model_units(image_exp, r['original'])
    condition = reverse.Inpainting(known, mask)
    kernel = reverse.compile_reverse_kernel(image_exp.diffusion, 4)
    times = range(image_exp.args['T'] + 1)
    _, frames = reverse.sample_trajectory(image_exp.diffusion, kernel, known.shape,
                                          np.random.default_rng(0), keep=times, condition=condition)
    assert sorted(frames) == list(times)
    for x in frames.values():
        assert np.array_equal(x[mask], known[mask])


def test_mask_everywhere_known_returns_the_original(image_exp, tmp_path):
    from PIL import Image
    path = str(tmp_path / 'all_known.png')
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(path)
    r = reverse.run(image_exp, 'inpaint', n=4, mask=path, n_frames=3)
    assert r['mask'].all()
    assert np.array_equal(r['samples'], r['original'])


def test_masks_left_centre_and_file_size_check(tmp_path):
    left = reverse.make_mask('left', (1, 4, 6))
    assert not left[:, :, :3].any() and left[:, :, 3:].all()
    centre = reverse.make_mask('centre', (1, 8, 8))
    assert (~centre).sum() == 16 and not centre[0, 2:6, 2:6].any()
    assert list(reverse.make_mask('left', (2,))) == [False, True]  # Swiss roll: y known
    from PIL import Image
    path = str(tmp_path / 'm.png')
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    with pytest.raises(ValueError, match='5x5, the images are 4x4'):
        reverse.make_mask(path, (1, 4, 4))


# ---------------------------------------------------------------- denoising and the Gaussian product

def test_gaussian_product_against_numeric_product_on_a_grid():
    x = np.linspace(-15, 15, 300001)
    for mu1, var1, mu2, var2 in [(0.3, 0.5, -1.2, 2.0), (2.0, 0.01, 0.0, 1.0), (-1.0, 3.0, 4.0, 0.2)]:
        density = np.exp(-(x - mu1) ** 2 / (2 * var1) - (x - mu2) ** 2 / (2 * var2))
        density /= density.sum()
        mean = (x * density).sum()
        var = ((x - mean) ** 2 * density).sum()
        got_mean, got_var = reverse.gaussian_product(mu1, var1, mu2, var2)
        assert got_mean == pytest.approx(mean, abs=1e-6) and got_var == pytest.approx(var, rel=1e-5)
    assert reverse.gaussian_product(0.7, 0.3, -2.0, 0.0) == (-2.0, 0.0)


def test_denoising_with_vanishing_noise_returns_the_observation(image_exp):
    r = reverse.run(image_exp, 'denoise', n=5, noise_std=1e-4, n_frames=3)
    assert not r['mask'].any()
    assert np.abs(r['observed'] - r['original']).max() < 1e-3 * 4  # noise 1e-4 z-units
    np.testing.assert_allclose(r['samples'], r['observed'], atol=1e-4)
    y = np.random.default_rng(1).standard_normal((5, 2)).astype(floatX)
    exp = roll_exp()
    x, _ = reverse.sample_trajectory(exp.diffusion, reverse.compile_reverse_kernel(exp.diffusion, 2), y.shape,
                                     np.random.default_rng(0), condition=reverse.GaussianObservation(y, 0.0))
    assert np.array_equal(x, y)


def test_denoising_moves_samples_toward_the_observation(image_exp):
    """Against plain sampling with the same seed, the denoised samples are much nearer y."""
    r = reverse.run(image_exp, 'denoise', n=8, noise_std=0.3, n_frames=2)
    plain = reverse.run(image_exp, 'sample', n=8, n_frames=2)
    d_denoised = np.abs(r['samples'] - r['observed']).mean()
    assert d_denoised < 0.5 * np.abs(plain['samples'] - r['observed']).mean()


# ---------------------------------------------------------------- Eq. 61

def test_eq61_gaussian_r_agrees_with_closed_form_to_first_order():
    """r(x) = N(y; x, s^2): Eq. 61 shifts the mean by Sigma (y - mu) / s^2, the exact product by
    Sigma (y - mu) / (Sigma + s^2). Their relative difference is Sigma / s^2 (first order)."""
    y = np.array([[1.5, -0.5]], floatX)
    s2 = 1.0
    smooth = reverse.SmoothObservation(lambda x: -T.sqr(x - y) / (2 * s2), 2)
    exact = reverse.GaussianObservation(y, s2)
    mu = np.array([[0.2, 0.4]], floatX)
    for eps in (1e-1, 1e-2, 1e-3):
        var = np.full_like(mu, eps * s2)
        m61, v61 = smooth.tilt((mu, var), slice(None))
        m, v = exact.tilt((mu, var), slice(None))
        np.testing.assert_allclose(v61, var)
        rel = np.abs((m61 - mu) - (m - mu)) / np.abs(m - mu)
        np.testing.assert_allclose(rel, eps, rtol=0.05)  # float32
    # a whole trajectory: with s^2 much larger than every Sigma <= 1, the two agree closely
    exp = roll_exp()
    kernel = reverse.compile_reverse_kernel(exp.diffusion, 2)
    s2 = 100.0
    y = np.random.default_rng(2).standard_normal((50, 2)).astype(floatX)
    run = [reverse.sample_trajectory(exp.diffusion, kernel, y.shape, np.random.default_rng(0), condition=c)[0]
           for c in (reverse.GaussianObservation(y, s2),
                     reverse.SmoothObservation(lambda x: -T.sqr(x - y) / (2 * s2), 2))]
    assert np.abs(run[0] - run[1]).max() < 0.05


# ---------------------------------------------------------------- the reverse trajectory

class CountingKernel:
    def __init__(self, kernel):
        self.kernel, self.times = kernel, []

    def __call__(self, x, t):
        self.times.append(int(t[0]))
        return self.kernel(x, t)


@pytest.mark.parametrize('fidelity, last', [('paper', 1), ('code', 2)])
def test_last_step_applied_in_paper_preset_skipped_in_code_preset(fidelity, last):
    exp = roll_exp(fidelity)
    assert exp.args['skip_last_step'] == (fidelity == 'code')
    kernel = CountingKernel(reverse.compile_reverse_kernel(exp.diffusion, 2))
    r = reverse.run(exp, 'sample', n=10, n_frames=5, kernel=kernel, batch_size=10)
    assert kernel.times == list(range(40, last - 1, -1))
    assert r['frame_times'][0] == 40 and r['frame_times'][-1] == last - 1
    np.testing.assert_array_equal(r['samples'], r['frames'][-1])


def test_same_seed_same_samples_whatever_the_batch_size():
    exp = roll_exp()
    kernel = reverse.compile_reverse_kernel(exp.diffusion, 2)
    a = reverse.run(exp, 'sample', n=30, seed=3, batch_size=7, kernel=kernel)['samples']
    b = reverse.run(exp, 'sample', n=30, seed=3, batch_size=7, kernel=kernel)['samples']
    c = reverse.run(exp, 'sample', n=30, seed=3, batch_size=30, kernel=kernel)['samples']
    d = reverse.run(exp, 'sample', n=30, seed=4, batch_size=7, kernel=kernel)['samples']
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-5)
    assert np.abs(a - d).mean() > 0.1


class OracleDiffusion(M.GaussianDiffusion):
    """A Gaussian diffusion whose reverse kernel is the exact reverse of q for the empirical
    distribution of `ref`, moment-matched to one Gaussian per step:
    p(x^{t-1} | x^t) = sum_i w_i(x^t) q(x^{t-1} | x^t, x^0 = ref_i), w_i proportional to
    q(x^t | ref_i). For small steps the reverse step is close to Gaussian, so the samples
    follow the reference points (Swiss roll data) closely."""

    def __init__(self, ref, beta):
        self.T_steps = len(beta)
        A = np.cumprod(1 - beta)
        A_prev = np.concatenate([[1.0], A[:-1]])
        c0 = np.sqrt(A_prev) * beta / (1 - A)          # weight of x^0 in the posterior mean
        c1 = np.sqrt(1 - beta) * (1 - A_prev) / (1 - A)  # weight of x^t
        var = beta * (1 - A_prev) / (1 - A)
        self.consts = [T.constant(v.astype(floatX)) for v in (np.sqrt(A), 1 - A, c0, c1, var)]
        self.ref = T.constant(ref.astype(floatX))

    def reverse_kernel(self, xt, t):
        sqrt_A, one_minus_A, c0, c1, var = (c[t - 1].dimshuffle(0, 'x') for c in self.consts)
        d2 = T.sqr(xt.dimshuffle(0, 'x', 1) - sqrt_A.dimshuffle(0, 1, 'x') * self.ref.dimshuffle('x', 0, 1)
                   ).sum(axis=2)  # (n, N)
        w = T.nnet.softmax(-d2 / (2 * one_minus_A))
        m1, m2 = T.dot(w, self.ref), T.dot(w, T.sqr(self.ref))
        return c0 * m1 + c1 * xt, var + T.sqr(c0) * T.maximum(m2 - T.sqr(m1), 0)  # float32 rounding


def test_swissroll_samples_from_an_exact_reverse_kernel_have_the_datas_log_density():
    """Tolerance: the samples' mean exact log density within 0.5 nat of the held-out data's
    (both about 2.6 nats per point here, b_1 = 1e-7 so that the last step's spread stays
    under the roll's width); a Gaussian with the data's moments scores far below (-5e4)."""
    noise = presets.SWISSROLL_NOISE
    ref = datasets.swissroll(3000, [0, 1], noise)
    test = datasets.swissroll(200, [0, 2], noise)
    diffusion = OracleDiffusion(ref, M.geometric_beta(200, 1e-7))
    x, _ = reverse.sample_trajectory(diffusion, reverse.compile_reverse_kernel(diffusion, 2), (200, 2),
                                     np.random.default_rng(0), batch_size=100)
    ll_samples = datasets.swissroll_log_density(x, noise).mean()
    ll_data = datasets.swissroll_log_density(test, noise).mean()
    gaussian = np.random.default_rng(1).standard_normal((200, 2)) * test.std(0) + test.mean(0)
    assert datasets.swissroll_log_density(gaussian, noise).mean() < ll_data - 5
    assert abs(ll_samples - ll_data) < 0.5, (ll_samples, ll_data)


# ---------------------------------------------------------------- binary data

def test_heartbeat_inpainting_keeps_known_bits_and_denoising_is_refused():
    args = presets.model_args('heartbeat', 'paper', dict(T=20, n_train=100, n_eval=50))
    exp = experiments.build('heartbeat', args, 0)
    r = reverse.run(exp, 'inpaint', n=20, mask='left', n_frames=3)
    assert not r['mask'][:, :10].any() and r['mask'][:, 10:].all()
    assert np.array_equal(r['samples'][:, 10:], r['original'][:, 10:])
    assert set(np.unique(r['samples'])) <= {0.0, 1.0}
    with pytest.raises(ValueError, match='binary'):
        reverse.run(exp, 'denoise', n=4)


# ---------------------------------------------------------------- checkpoints and the command line

def write_checkpoint(path, fidelity='paper'):
    exp = roll_exp(fidelity)
    rng = np.random.default_rng(5)
    for p in exp.params:  # parameters unlike a fresh model's
        p.set_value((p.get_value() + 0.01 * rng.standard_normal(p.get_value().shape)).astype(floatX))
    args = {'dataset': 'swissroll', 'fidelity': fidelity, 'model_args': SMALL_ROLL, 'seed': 0,
            'data_path': None}
    checkpoints.save_checkpoint(path, {'shared': {p.name: p.get_value() for p in exp.params}, 'status': {'iterations_done': 0},
                                    'config': {'args': args, 'model': exp.args}})
    return exp


def test_from_checkpoint_loads_every_parameter(tmp_path):
    path = str(tmp_path / 'checkpoint.npz')
    saved = write_checkpoint(path)
    exp = experiments.from_checkpoint(path)
    assert exp.dataset == 'swissroll' and len(exp.params) == len(saved.params)
    for a, b in zip(exp.params, saved.params):
        assert a.name == b.name and np.array_equal(a.get_value(), b.get_value())


def test_checkpoint_from_before_a_model_key_loads_as_it_was_trained(tmp_path):
    path = str(tmp_path / 'checkpoint.npz')
    saved = write_checkpoint(path)
    state = checkpoints.load_checkpoint(path)
    del state['config']['model']['beta_min']  # written before the key existed
    checkpoints.save_checkpoint(path, state)
    exp = experiments.from_checkpoint(path)
    assert exp.args['beta_min'] == M.BETA_MIN != saved.args['beta_min']
    assert exp.diffusion.schedule.beta_min == M.BETA_MIN


def test_command_line_inpaint_writes_npz_and_figure(tmp_path):
    path = str(tmp_path / 'checkpoint.npz')
    write_checkpoint(path)
    out = str(tmp_path / 'out')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'sampler.py'), path, '--mode', 'inpaint',
                        '--mask', 'left', '--n', '30', '--frames', '4', '--out', out, '--batch-size', '8'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with np.load(os.path.join(out, 'inpaint.npz')) as f:
        assert f['samples'].shape == (30, 2) and f['frames'].shape == (4, 30, 2)
        assert np.array_equal(f['samples'][:, 1], f['original'][:, 1])  # y known
        assert list(f['frame_times']) == [40, 27, 13, 0]
    assert os.path.getsize(os.path.join(out, 'inpaint_frames.png')) > 2000
    bad = subprocess.run([sys.executable, os.path.join(ROOT, 'sampler.py'), path, '--mode', 'inpaint',
                          '--mask', 'nosuchfile.png'], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert 'neither left, centre nor a file' in bad.stderr


@pytest.mark.parametrize('flags, expected', [
    (['--frames', '1000000000'], '--frames 1000000000: the reverse process has 41 states to show; give at most 41'),
    (['--n', '1000000000000'], '--n 1000000000000 needs at least'),
])
def test_sizes_that_cannot_be_drawn_are_refused_in_one_line_before_sampling(tmp_path, capsys, flags, expected):
    path = str(tmp_path / 'checkpoint.npz')
    write_checkpoint(path)
    with pytest.raises(SystemExit) as stop:
        sampler.main([path, '--output-dir', str(tmp_path / 'out')] + flags)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / 'out').exists()


def test_training_extension_plots_samples_and_inpainting_and_skips_when_slow(image_exp, tmp_path):
    class Loop:
        status = {'seed': 0}
    extensions.SamplePlots(image_exp, str(tmp_path), every_n_batches=1, n=4)(Loop(), 'batch')
    assert sorted(os.listdir(str(tmp_path))) == ['inpaint_frames.png', 'inpaint_paper.png', 'inpaint_samples.png',
                                                 'sample_frames.png', 'sample_paper.png', 'sample_samples.png']
    slow = tmp_path / 'slow'
    slow.mkdir()
    extensions.SamplePlots(image_exp, str(slow), every_n_batches=1, n=4, max_s=0.0)(Loop(), 'batch')
    assert os.listdir(str(slow)) == []


def test_paper_layouts_figure_4_and_5(image_exp, tmp_path):
    """Figure 4: training images beside samples in grids of the same size; Figure 5: per
    example the original, the start x^T (unknown region from the prior) and the result."""
    sample = reverse.run(image_exp, 'sample', n=4, n_frames=2)
    training = image_exp.train_x[:4] / np.float32(255)
    fig4 = figures.paper_layout(sample, training, 2)
    assert [title for title, _ in fig4] == ['training images', 'samples from the model']
    np.testing.assert_array_equal(fig4[0][1], figures.tile(training, 2))
    np.testing.assert_array_equal(fig4[1][1], figures.tile(sample['samples'], 2))
    inpaint = reverse.run(image_exp, 'inpaint', n=5, n_frames=3, mask='centre')
    fig5 = figures.paper_layout(inpaint, training, 2)
    H, W = image_exp.test_x.shape[2:]
    assert [a.shape for _, a in fig5] == [(4 * (H + 1) - 1, W, 3)] * 3  # 4 examples, one column each
    np.testing.assert_array_equal(fig5[0][1][:H], inpaint['original'][0].transpose(1, 2, 0))
    np.testing.assert_array_equal(fig5[2][1][:H], inpaint['samples'][0].transpose(1, 2, 0))
    path = os.path.join(str(tmp_path), 'paper.png')
    figures.save_labelled_panels(fig4, path, zoom=4)
    assert os.path.getsize(path) > 0


def test_the_training_images_shown_come_from_the_whole_training_set():
    """A training set sorted by class (mnist5k's) shows every part of it, not its first class."""
    train_x = np.repeat(np.arange(10, dtype=np.uint8) * 25, 400).reshape(4000, 1, 1, 1)  # 10 'classes' in order
    shown = figures.shown_training_images(train_x, 16)
    assert shown.shape == (16, 1, 1, 1) and shown.dtype == np.float32
    assert len(np.unique(shown)) >= 6  # 16 draws of 10 equal classes: at least 6 of them (first 16 images: 1)
    np.testing.assert_array_equal(shown, figures.shown_training_images(train_x, 16))  # fixed seed
    assert len(figures.shown_training_images(train_x[:5], 16)) == 5
