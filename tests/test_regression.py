"""The image networks of regression.py: the multi-scale convolution against a NumPy
reference, output shapes, the released code's parameter counts, the preset switches."""
import numpy as np
import pytest
import theano
import theano.tensor as T

import experiments
import multiscale
import presets
import reference_ops
import regression as R

pytestmark = pytest.mark.slow  # compiles the networks (python -m pytest -m "not slow" leaves it out)

floatX = theano.config.floatX
CIFAR_SHAPE, MNIST_SHAPE = (3, 32, 32), (1, 28, 28)


# ---------------------------------------------------------------- NumPy reference

def np_softplus(x):
    return np.log1p(np.exp(x))


def np_leaky(x):
    return np.where(x > 0, x, 0.05 * x)


def np_correlate_same(x, w, b):
    """3x3 'same' cross-correlation with zero padding, by explicit sums over offsets; b one
    bias per filter (F,) or per filter and pixel (F, h, w)."""
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + 2, wd + 2))
    xp[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[0], h, wd))
    for f in range(w.shape[0]):
        for a in range(3):
            for bb in range(3):
                out[:, f] += np.einsum('nchw,c->nhw', xp[:, :, a:a + h, bb:bb + wd], w[f, :, a, bb])
        out[:, f] += b[f]  # a number, or an (h, w) plane
    return out


def np_pool(x, k):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))


def np_upsample(x, k):
    return np.kron(x, np.ones((1, 1, k, k)))


def np_multiscale(x, weights, biases, f, placement):
    outs = [np_upsample(np_correlate_same(np_pool(x, 2 ** s), w, b), 2 ** s)
            for s, (w, b) in enumerate(zip(weights, biases))]
    if placement == 'after_sum':
        return f(sum(outs))
    return sum(f(o) for o in outs) / len(outs)


@pytest.mark.parametrize('conv_impl', ['corrmm', 'winograd', 'im2col'])
@pytest.mark.parametrize('n_scales', [1, 2, 3])
@pytest.mark.parametrize('placement,nonlinearity', [('after_sum', 'paper'), ('per_scale', 'code'),
                                                    ('after_sum', 'code'), ('per_scale', 'paper')])
def test_multiscale_conv_matches_numpy(n_scales, placement, nonlinearity, conv_impl):
    rng = np.random.default_rng(n_scales)
    f = R.NONLINEARITIES[nonlinearity]['conv']
    layer = R.MultiScaleConv('ms', 2, 3, n_scales, rng, f, placement, conv_impl=conv_impl)
    # larger weights and non-zero biases than the initialisation, so every term matters
    for p in layer.params:
        p.set_value(rng.normal(size=p.get_value().shape).astype(floatX))
    x = rng.normal(size=(2, 2, 8, 12)).astype(floatX)
    xs = T.tensor4('x')
    got = theano.function([xs], layer(xs))(x)
    np_f = np_softplus if nonlinearity == 'paper' else np_leaky
    want = np_multiscale(x.astype(np.float64), [w.get_value() for w in layer.W],
                         [b.get_value() for b in layer.b], np_f, placement)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('conv_impl', ['corrmm', 'winograd'])
@pytest.mark.parametrize('placement', ['after_sum', 'per_scale'])
def test_untied_biases_are_the_centre_of_the_full_output_shape(placement, conv_impl):
    """tied_biases=False (released code): scale s has biases of the 'full' output's shape
    (F, h_s + 2, w_s + 2); the 'same' output takes their central (F, h_s, w_s), the outer ring
    reaches nothing (zero gradient)."""
    rng = np.random.default_rng(5)
    layer = R.MultiScaleConv('ms', 2, 3, 2, rng, 'softplus', placement, conv_impl=conv_impl,
                             tied_biases=False, image_size=(8, 12))
    assert [b.get_value().shape for b in layer.b] == [(3, 10, 14), (3, 6, 8)]
    for p in layer.params:
        p.set_value(rng.normal(size=p.get_value().shape).astype(floatX))
    x = rng.normal(size=(2, 2, 8, 12)).astype(floatX)
    xs = T.tensor4('x')
    y = layer(xs)
    got, *grads = theano.function([xs], [y] + T.grad(y.sum(), layer.b))(x)
    want = np_multiscale(x.astype(np.float64), [w.get_value() for w in layer.W],
                         [b.get_value()[:, 1:-1, 1:-1] for b in layer.b], np_softplus, placement)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for g in grads:
        ring = np.ones(g.shape, bool)
        ring[:, 1:-1, 1:-1] = False
        assert not g[ring].any() and np.abs(g[~ring]).min() > 0


@pytest.mark.parametrize('n_in,expected', [(1, ['corrmm'] * 3), (7, ['corrmm'] * 3), (8, ['winograd'] * 3),
                                            (20, ['winograd'] * 3), (100, ['winograd'] * 3)])
def test_auto_convolution_takes_winograd_from_8_channels_at_every_scale(n_in, expected):
    assert R.auto_conv_impls(n_in, 3) == expected
    layer = R.MultiScaleConv('ms', n_in, 4, 3, np.random.default_rng(0), 'softplus', 'after_sum', conv_impl='auto')
    assert layer.conv_impls == expected


@pytest.mark.parametrize('placement', ['after_sum', 'per_scale'])
def test_network_gradients_agree_between_convolutions(placement):
    """The same network (same initial parameters) through CorrMM and through Winograd:
    output and the gradient of every parameter equal within float32 tolerance."""
    shape, xs = (3, 8, 8), T.tensor4('x')
    x = np.random.default_rng(1).normal(size=(4,) + shape).astype(floatX)
    results = []
    for impl in ('corrmm', 'winograd'):
        net = R.ImageNetwork(shape, np.random.default_rng(0), scale_nonlinearity=placement,
                             conv_impl=impl, **dict(SMALL, n_hidden_conv=33))
        y = read_out(net, xs)
        cost = (y ** 2).sum()
        results.append(theano.function([xs], [y] + T.grad(cost, net.params))(x))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * np.abs(want).max())


def test_multiscale_conv_initialisation():
    rng = np.random.default_rng(0)
    layer = R.MultiScaleConv('ms', 20, 100, 2, rng, R.leaky_relu, 'per_scale')
    w = np.concatenate([p.get_value().ravel() for p in layer.W])
    assert abs(w.std() / (np.sqrt(1 / 100) / 9) - 1) < 0.03
    assert all(not b.get_value().any() for b in layer.b)


def test_sides_not_divisible_by_the_coarsest_scale_are_refused():
    with pytest.raises(ValueError, match='divisible by 8'):
        R.ImageNetwork((1, 28, 28), np.random.default_rng(0), n_scales=4)


# ---------------------------------------------------------------- the whole network

SMALL = dict(n_temporal_basis=4, n_hidden_dense_lower=16, n_hidden_dense_lower_output=2,
             n_hidden_dense_upper=8, n_hidden_conv=4, n_layers_conv=2, n_layers_dense_lower=2,
             n_layers_dense_upper=2, n_scales=2)


def read_out(net, xs, T_steps=5, basis=None):
    """The network's output as the diffusion reads it (TemporalReadout): (z_mu, z_Sigma)
    stacked, (n, C, H, W, 2), example i at step t = i mod T_steps + 1."""
    basis = R.temporal_basis(T_steps, net.J, 'code') if basis is None else basis
    t = T.arange(xs.shape[0]) % basis.shape[1] + 1
    return T.stack(R.TemporalReadout(net, basis)(xs, t), axis=-1)


@pytest.mark.parametrize('shape', [MNIST_SHAPE, CIFAR_SHAPE])
@pytest.mark.parametrize('conv_path', [True, False])
def test_output_shape(shape, conv_path):
    net = R.ImageNetwork(shape, np.random.default_rng(0), conv_path=conv_path, **SMALL)
    xs = T.tensor4('x')
    y = theano.function([xs], read_out(net, xs))(np.zeros((3,) + shape, floatX) + 0.5)
    assert y.shape == (3,) + shape + (2,)
    assert np.isfinite(y).all() and y.std() > 0


def test_readout_index_order_is_channel_then_mu_sigma_then_j():
    """Read-out unit c*2J + k*J + j lands at y[:, c, :, :, k, j]: with the basis g_j(t) = 1
    where t = j + 1, else 0, it is z[:, c, :, :, k] at step j + 1."""
    shape = (3, 4, 4)
    net = R.ImageNetwork(shape, np.random.default_rng(0), **dict(SMALL, n_scales=1))
    net.readout.W.set_value(np.zeros_like(net.readout.W.get_value()))
    J = SMALL['n_temporal_basis']
    net.readout.b.set_value(np.arange(3 * 2 * J, dtype=floatX))
    xs = T.tensor4('x')
    z = theano.function([xs], read_out(net, xs, basis=np.eye(J, dtype=floatX)))(np.zeros((J,) + shape, floatX))
    assert z[3, 2, 3, 1, 1] == 2 * 2 * J + 1 * J + 3
    assert all(z[j, c, 0, 0, k] == c * 2 * J + k * J + j for j in range(J) for c in range(3) for k in range(2))


def count(net):
    return sum(p.get_value().size for p in net.params)


def image_net(dataset, fidelity, shape, **overrides):
    args = presets.model_args(dataset, fidelity, overrides)
    return R.ImageNetwork(shape, np.random.default_rng(0),
                          **{k: args[k] for k in experiments.IMAGE_NET_KEYS})


def test_parameter_count_mnist_code_defaults():
    """The released code's MNIST network (docs/paper_and_code.md, section 5): dense
    784-500-500-500-1568 (1,679,068); conv 1-20-20-20-20 weights (10,980) with untied biases
    of 20 x 30 x 30 per layer (72,000); per-pixel 22-20 and read-out 20-20 (880)."""
    assert count(image_net('MNIST', 'code', MNIST_SHAPE)) == 1679068 + 10980 + 72000 + 880 == 1762928
    assert count(image_net('MNIST', 'code', MNIST_SHAPE, tied_biases=True)) == 1691008


def test_parameter_count_cifar10_code_configuration(monkeypatch):
    """The released code's CIFAR-10 network (docs/paper_and_code.md, section 5): dense
    3072-1000x5-5120 (12,202,120); conv 3-100x6 weights (452,700) with untied biases of
    100 x 34 x 34 per layer (693,600); per-pixel 105-100-100-100 and read-out 100-60
    (36,860). The count needs the shapes alone: zeros stand for the dense layers'
    orthogonal matrices, whose QR took most of the two builds' time."""
    monkeypatch.setattr(R, 'orthogonal_init', lambda rng, shape: np.zeros(shape))
    assert count(image_net('CIFAR10', 'code', CIFAR_SHAPE)) == 12202120 + 452700 + 693600 + 36860 == 13385280
    assert count(image_net('CIFAR10', 'code', CIFAR_SHAPE, tied_biases=True)) == 12692280


def test_paper_mnist_network_is_dense_only():
    net = image_net('MNIST', 'paper', MNIST_SHAPE)
    assert not net.conv
    # the code network's dense path (1,679,068), per-pixel 2-20 and read-out 20-20
    assert count(net) == 1679068 + 60 + 420 == 1691008 - 11060 - 20 * 20


@pytest.mark.parametrize('dense_upper', [2, 1])
def test_feature_scaling_divides_each_lower_path_by_the_root_of_its_width(dense_upper):
    """feature_scaling=True (released code): the first per-pixel layer (or the read-out) sees
    conv / sqrt(n_hidden_conv) and dense / sqrt(n_hidden_dense_lower_output) concatenated;
    with one lower path, nothing is scaled."""
    kw = dict(SMALL, n_hidden_conv=4, n_hidden_dense_lower_output=3, n_layers_dense_upper=dense_upper)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 1, 4, 4)).astype(floatX)
    xs = T.tensor4('x')
    net = R.ImageNetwork((1, 4, 4), np.random.default_rng(0), feature_scaling=True, **kw)
    conv, dense = theano.function([xs], net.lower_paths(xs))(x)
    features = np.concatenate([conv / 2, dense / np.sqrt(3)], axis=1).transpose(0, 2, 3, 1).reshape(2, 16, 7)
    layer = net.dense_upper[0] if net.dense_upper else net.readout
    pre = features @ layer.W.get_value() + layer.b.get_value()
    want = np_leaky(pre) if net.dense_upper else features  # f_dense of nonlinearity='code'
    got = theano.function([xs], net.hidden(xs))(x)  # the features the read-out takes
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for path in ('conv_path', 'dense_path'):  # one path: the same network with or without the key
        nets = [R.ImageNetwork((1, 4, 4), np.random.default_rng(0), feature_scaling=s, **dict(kw, **{path: False}))
                for s in (False, True)]
        y0, y1 = (theano.function([xs], read_out(n, xs))(x) for n in nets)
        np.testing.assert_array_equal(y0, y1)


# ---------------------------------------------------------------- preset switches

def shapes(net):
    return {p.name: p.get_value().shape for p in net.params}


def test_conv_path_switch_removes_exactly_the_conv_path():
    with_conv = shapes(image_net('CIFAR10', 'code', CIFAR_SHAPE, conv_path=True))
    without = shapes(image_net('CIFAR10', 'code', CIFAR_SHAPE, conv_path=False))
    removed = set(with_conv) - set(without)
    assert removed and all(name.startswith('conv') for name in removed)
    changed = {n for n in without if without[n] != with_conv[n]}
    assert changed == {'dense_upper0.W'}  # its input loses the 100 conv channels
    assert with_conv['dense_upper0.W'][0] - without['dense_upper0.W'][0] == 100


def test_dense_depth_switch_changes_only_the_dense_path_depth():
    kw = dict(SMALL, n_layers_conv=3, n_layers_dense_lower=2)
    quirk = R.ImageNetwork(MNIST_SHAPE, np.random.default_rng(0), dense_depth_from_conv=True, **kw)
    plain = R.ImageNetwork(MNIST_SHAPE, np.random.default_rng(0), dense_depth_from_conv=False, **kw)
    assert (len(quirk.dense_lower), len(plain.dense_lower)) == (3, 2)
    assert len(quirk.conv) == len(plain.conv) == 3
    a, b = shapes(quirk), shapes(plain)
    assert {n for n in set(a) | set(b) if a.get(n) != b.get(n)} <= {
        'dense_lower{}.{}'.format(i, k) for i in range(3) for k in 'Wb'}


@pytest.mark.parametrize('key', ['nonlinearity', 'scale_nonlinearity'])
def test_nonlinearity_switches_keep_parameters_and_change_outputs(key):
    values = {'nonlinearity': ('paper', 'code'), 'scale_nonlinearity': ('after_sum', 'per_scale')}[key]
    nets = [R.ImageNetwork((1, 8, 8), np.random.default_rng(0), **dict(SMALL, **{key: v})) for v in values]
    assert shapes(nets[0]) == shapes(nets[1])
    for p, q in zip(nets[0].params, nets[1].params):
        np.testing.assert_array_equal(p.get_value(), q.get_value())
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8)).astype(floatX)
    xs = T.tensor4('x')
    y0, y1 = (theano.function([xs], read_out(net, xs))(x) for net in nets)
    assert np.abs(y0 - y1).max() > 1e-3


def test_paper_nonlinearities_are_softplus_and_tanh_code_leaky_relu():
    v = np.array([[-2.0, 0.5]], dtype=floatX)
    xs = T.matrix('v')
    paper, code = R.NONLINEARITIES['paper'], R.NONLINEARITIES['code']
    zero = np.zeros(2, floatX)

    def apply(name):
        return theano.function([xs], multiscale.bias_activation(xs, zero, name))(v)[0]
    np.testing.assert_allclose(apply(paper['conv']), np.log1p(np.exp(v[0])), rtol=1e-5)
    np.testing.assert_allclose(apply(paper['dense']), np.tanh(v[0]), rtol=1e-5)
    for name in (code['conv'], code['dense']):
        np.testing.assert_allclose(apply(name), [-0.1, 0.5], rtol=1e-5)


@pytest.mark.parametrize('placement', ['after_sum', 'per_scale'])
def test_multiscale_layer_is_its_reference_formula(placement):
    """The C passes (multiscale.py) compute the layer of Appendix D.2.1 as written with
    mean_pool, upsample_nearest and Theano's own nonlinearities."""
    rng = np.random.default_rng(2)
    layer = R.MultiScaleConv('m', 2, 3, 3, rng, 'softplus', placement)
    for b in layer.b:
        b.set_value(rng.normal(size=3).astype(floatX))
    xs = T.tensor4('x')
    conv = [T.nnet.conv2d(reference_ops.mean_pool(xs, 2 ** s), layer.W[s], border_mode='half', filter_flip=False)
            + layer.b[s].dimshuffle('x', 0, 'x', 'x') for s in range(3)]
    if placement == 'after_sum':
        reference = T.nnet.softplus(sum(reference_ops.upsample_nearest(c, 2 ** s) for s, c in enumerate(conv)))
    else:
        reference = sum(reference_ops.upsample_nearest(T.nnet.softplus(c), 2 ** s) for s, c in enumerate(conv)) / 3
    x = rng.normal(size=(2, 2, 8, 12)).astype(floatX)
    fast, slow = (theano.function([xs], e)(x) for e in (layer(xs), reference))
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_presets_differ_in_named_image_keys_only_and_spare_the_toy_sets():
    paper, code = (presets.model_args('CIFAR10', f, {}) for f in ('paper', 'code'))
    differ = {k for k in paper if paper[k] != code[k]}
    assert differ == {'learn_beta', 'code_mu', 'code_sigma', 'kl_factor', 'basis_width',
                      't_per_minibatch', 'nonlinearity', 'scale_nonlinearity',
                      'dense_depth_from_conv', 'dequantisation', 'norm_from_minibatch',
                      'skip_last_step', 'tied_biases', 'feature_scaling', 'nonfinite_gradient'}
    assert presets.model_args('MNIST', 'paper', {})['conv_path'] is False
    assert presets.model_args('MNIST', 'code', {})['conv_path'] is True
    for fidelity in ('paper', 'code'):
        toy = presets.model_args('swissroll', fidelity, {})
        assert not set(presets.IMAGE_PRESET_KEYS) & set(toy)
        assert set(presets.model_args('heartbeat', fidelity, {})) == set(presets.MODEL_ARGS['heartbeat'])
    toy_paper = presets.model_args('swissroll', 'paper', {})
    assert toy_paper['beta_init'] == presets.MODEL_ARGS['swissroll']['beta_init']


def test_checkpoint_from_before_the_three_keys_builds_the_network_it_trained():
    """A code-preset image checkpoint written before tied_biases, feature_scaling and
    nonfinite_gradient existed loads with one bias per filter, unscaled features and dropped
    non-finite steps (presets.ADDED_KEYS), as it was trained."""
    model = presets.model_args('digits', 'code', {})
    for key in ('tied_biases', 'feature_scaling', 'nonfinite_gradient'):
        del model[key]
    config = presets.checkpoint_model_config({'config': {'args': {'dataset': 'digits'}, 'model': model}})
    assert (config['tied_biases'], config['feature_scaling'], config['nonfinite_gradient']) == (True, False, 'drop_step')
    net = R.ImageNetwork((1, 8, 8), np.random.default_rng(0), **{k: config[k] for k in experiments.IMAGE_NET_KEYS})
    assert all(b.get_value().ndim == 1 for layer in net.conv for b in layer.b)
    assert net.feature_scales == [1.0, 1.0]
    roll = presets.model_args('swissroll', 'code', {})
    del roll['nonfinite_gradient']
    assert presets.checkpoint_model_config({'config': {'args': {'dataset': 'swissroll'}, 'model': roll}})[
        'nonfinite_gradient'] == 'drop_step'
