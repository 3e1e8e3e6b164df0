"""The image parts of model.py, regression.py and experiments.py: temporal read-out, the two read-out
formulas, dequantisation, z-scoring, bits per pixel, the learned schedule's gradient."""
import numpy as np
import pytest
import theano
import theano.tensor as T

import bound
import experiments
import model as M
import presets
import regression as R
from conftest import TINY_IMAGE_ARGS

pytestmark = pytest.mark.slow  # builds and compiles image networks (python -m pytest -m "not slow" leaves it out)

floatX = theano.config.floatX


class OnePixelNetwork:
    """A stand-in ImageNetwork of one channel and one pixel whose features h are one-hot per
    example, so that example i's y (2, J) is row i of the read-out's weights."""

    C, J, params = 1, 3, []

    def __init__(self, y):
        self.readout = R.Dense('readout', len(y), 2 * self.J, np.random.default_rng(0))
        self.readout.W.set_value(y.reshape(len(y), -1))

    def hidden(self, xt):
        return T.eye(xt.shape[0], dtype=floatX).dimshuffle(0, 'x', 1)  # (n, 1 pixel, F = n)


def test_temporal_readout_hand_computed():
    """z = sum_j y_j g_j(t) at each example's step t (Appendix D.2.1)."""
    y = np.zeros((2, 2, 3), floatX)  # (example, mu/Sigma, j)
    y[0, 0], y[0, 1], y[1, 0] = [1, 2, 3], [4, 5, 6], [1, 1, 1]
    basis = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], floatX).T  # g(t = 1), g(t = 2): (J, T)
    xs, ts = T.tensor4('x'), T.lvector('t')
    readout = R.TemporalReadout(OnePixelNetwork(y), basis)
    z_mu, z_sigma = theano.function([xs, ts], list(readout(xs, ts)))(np.zeros((2, 1, 1, 1), floatX), [1, 2])
    np.testing.assert_allclose([z_mu[0, 0, 0, 0], z_sigma[0, 0, 0, 0]], [1.5, 4.5], rtol=1e-6)
    np.testing.assert_allclose([z_mu[1, 0, 0, 0], z_sigma[1, 0, 0, 0]], [1.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize('dense_path, n_layers_dense_upper', [(True, 2), (False, 3), (True, 1)])
def test_temporal_readout_is_the_network_output_read_at_each_examples_step(dense_path, n_layers_dense_upper):
    """TemporalReadout folds the basis into the read-out weights; it must equal the
    read-out's y = h W + b (n, C, H, W, 2, J) contracted with g(t) of each example's own step."""
    J, T_steps = 3, 6
    basis = R.temporal_basis(T_steps, J, 'code')
    net = R.ImageNetwork((2, 4, 4), np.random.default_rng(0), n_temporal_basis=J, n_hidden_dense_lower=8,
                         n_hidden_dense_upper=5, n_hidden_conv=3, n_layers_conv=2, n_scales=2,
                         dense_path=dense_path, n_layers_dense_upper=n_layers_dense_upper)
    for p in net.params:  # biases away from 0, so that they are tested too
        p.set_value(p.get_value() + np.float32(0.1))
    readout = R.TemporalReadout(net, basis)
    xs, ts = T.tensor4('x'), T.lvector('t')
    fast = theano.function([xs, ts], list(readout(xs, ts)))
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(floatX)
    steps = [1, 4, 6]
    z_mu, z_sigma = fast(x, steps)
    h = theano.function([xs], net.hidden(xs))(x)  # (n, H W, F)
    y = (h @ net.readout.W.get_value() + net.readout.b.get_value()).reshape(3, 4, 4, 2, 2, J).transpose(0, 3, 1, 2, 4, 5)
    for i, t in enumerate(steps):
        np.testing.assert_allclose(z_mu[i], y[i, :, :, :, 0] @ basis[:, t - 1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(z_sigma[i], y[i, :, :, :, 1] @ basis[:, t - 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('code,sigma,mu', [(False, 0.15482809896025468, 1.0606547109357707),
                                           (True, 0.10459086082705091, 1.2332882874656679)])
def test_readout_formulas_hand_computed(code, sigma, mu):
    """z^Sigma = 0.5, z^mu = 0.3, b_t = 0.1, x^t = 1.2, T = 100.
    Paper Eq. 64: sigmoid(0.5 + logit 0.1) = 1 / (1 + 9 e^-0.5) = 0.15483;
    Eq. 65: (1.2 - 0.3)(1 - 0.15483) + 0.3 = 1.06065.
    Code: sigmoid(0.5 / 10 + logit 0.1) = 0.10459; 1.2 sqrt(0.9) + 0.3 sqrt(0.1) = 1.23329."""
    zs, zm, b, x = (T.scalar(n) for n in ('zs', 'zm', 'b', 'x'))
    s = M.readout_sigma(zs, b, 100, code)
    f = theano.function([zs, zm, b, x], [s, M.readout_mu(x, zm, s, b, code)])
    got = f(0.5, 0.3, 0.1, 1.2)
    np.testing.assert_allclose(got, [sigma, mu], rtol=1e-5)


def test_pixel_units_by_hand():
    paper, code = experiments.PixelUnits(-0.5, 3.0, 'paper'), experiments.PixelUnits(-0.5, 3.0, 'code')
    assert paper.width == pytest.approx(3.0 / 255) and paper.level_spacing == pytest.approx(3.0 / 255)
    assert code.width == pytest.approx(1.0 / 765)  # the released code's (1 / 255) / scale
    x = np.array([0, 255], np.uint8)
    np.testing.assert_allclose(paper.zscore(x), [-1.5, 1.5])
    np.testing.assert_allclose(paper.to_unit(paper.zscore(x)), [0.0, 1.0])
    u = np.random.default_rng(0).random(2)
    np.testing.assert_allclose(paper.dequantise(x, np.random.default_rng(0)), [-1.5, 1.5] + paper.width * u)
    np.testing.assert_allclose(code.dequantise(x, np.random.default_rng(0)), [-1.5, 1.5] + code.width * (u - 0.5))


# ---------------------------------------------------------------- experiments on stand-in images

@pytest.fixture
def fake_images():
    """CIFAR-shaped (3 channels) 4x4 random images."""
    rng = np.random.default_rng(0)
    return {'train': rng.integers(0, 256, (600, 3, 4, 4)).astype(np.uint8),
            'test': rng.integers(0, 256, (50, 3, 4, 4)).astype(np.uint8)}


def tiny_experiment(fidelity, images, **overrides):
    args = presets.model_args('CIFAR10', fidelity, dict(TINY_IMAGE_ARGS, **overrides))
    return experiments.from_arrays('CIFAR10', args, 0, images['train'], images['test'])


def test_bits_per_pixel_count_all_channels(fake_images):
    exp = tiny_experiment('paper', fake_images)
    assert exp.unit == 'bits/pixel' and exp.n_pixels(fake_images['test']) == 16
    assert exp.null_bits == pytest.approx(3 * -0.5 * np.log2(2 * np.pi * np.e))  # -6.14
    per_dim_nats = -1.0
    fn = lambda x0, t, noise: (np.zeros(len(x0)), np.full(len(x0), per_dim_nats * 48))  # noqa: E731
    r = bound.heldout_bound(exp, fake_images['test'], fn=fn)
    assert r['K_bits'] == pytest.approx(3 * per_dim_nats / np.log(2))
    assert r['K_minus_Lnull_bits'] == pytest.approx(3 * (per_dim_nats / np.log(2) + 0.5 * np.log2(2 * np.pi * np.e)))


@pytest.mark.parametrize('fidelity', ['paper', 'code'])
def test_zscoring_and_dequantised_inputs(fake_images, fidelity):
    exp = tiny_experiment(fidelity, fake_images)
    pixels, train = exp.pixels, fake_images['train'] / 255.0
    if fidelity == 'paper':  # the whole training set, noise U(0, 1) w
        assert pixels.shift == pytest.approx(-train.mean()) and pixels.scale == pytest.approx(1 / train.std())
        assert pixels.width == pytest.approx(pixels.scale / 255)
        low, high = 0, 1
    else:  # one minibatch of the default batch size (200 for CIFAR10), centred noise
        assert pixels.shift != pytest.approx(-train.mean(), abs=1e-6)
        assert pixels.width == pytest.approx(1 / (255 * pixels.scale))
        low, high = -0.5, 0.5
    x = fake_images['test']
    x0 = exp.draw_inputs(np.random.default_rng(0), x)[0]
    offset = (x0 - pixels.zscore(x)) / pixels.width
    assert x0.dtype == floatX and offset.min() > low - 1e-3 and offset.max() < high + 1e-3 and offset.std() > 0.2


def test_bound_gradient_reaches_b2_to_bT_not_b1_in_paper_preset(fake_images):
    exp = tiny_experiment('paper', fake_images)
    schedule = exp.diffusion.schedule
    assert schedule.params == [schedule.c]
    beta = schedule.beta()
    # d b_t / d c, one row per step (row by row: T.jacobian would build a scan)
    jac = theano.function([], T.stack([T.grad(beta[i], schedule.c) for i in range(exp.args['T'])]))()
    assert not jac[0].any() and (np.abs(jac[1:]).sum(axis=1) > 0).all()
    grad = theano.function([exp.x0, exp.t, exp.noise], T.grad(exp.K_nats.mean(), schedule.c))
    g = grad(*exp.draw_inputs(np.random.default_rng(0), fake_images['test']))
    assert np.abs(g).max() > 0
    assert theano.function([], beta[0])() == pytest.approx(exp.args['beta_1'])


def test_code_preset_schedule_is_fixed_harmonic(fake_images):
    exp = tiny_experiment('code', fake_images)
    assert exp.diffusion.schedule.params == []
    beta = exp.diffusion.beta_values()
    harmonic = M.harmonic_beta(20)
    np.testing.assert_allclose(beta[1:], M.BETA_MIN + harmonic[1:] * (1 - M.BETA_MIN - 1e-5), rtol=1e-4)
    floor_1 = M.BETA_MIN + 0.001  # the released code raises the floor of b_1
    assert beta[0] == pytest.approx(floor_1 + harmonic[0] * (1 - floor_1 - 1e-5), rel=1e-5)


def test_evaluation_draws_one_t_per_example_even_in_code_preset(fake_images):
    exp = tiny_experiment('code', fake_images)
    x = fake_images['test']
    assert len(set(exp.draw_inputs(np.random.default_rng(0), x)[1])) == 1
    assert len(set(exp.draw_inputs(np.random.default_rng(0), x, evaluation=True)[1])) > 1
