"""multiscale.py: the mean-pool pyramid, the upsample-sum and the bias-activation ops
against the same expressions built from Theano's own ops (forward and gradients), finite
differences, extreme inputs, error messages and the compiled training graph."""
import re

import numpy as np
import pytest
import theano
import theano.tensor as T

import conv3x3
import multiscale as M
import reference_ops
import regression as R

pytestmark = pytest.mark.slow  # compiles the C ops and their gradients (python -m pytest -m "not slow" leaves it out)

ACTIVATIONS = (None, 'softplus', 'tanh', 'leaky_relu')
THEANO_ACTIVATION = {None: lambda v: v, 'softplus': T.nnet.softplus, 'tanh': T.tanh,
                     'leaky_relu': R.leaky_relu}
# (n, C, H, W, n_scales): n = 1, odd channel counts, H != W, sides 2^(n_scales - 1) times
# small multiples (1, 2, 3, 5)
SHAPES = [(1, 3, 8, 12, 3), (2, 5, 16, 8, 4), (3, 1, 2, 6, 2), (2, 3, 5, 7, 1), (1, 2, 8, 8, 4)]


def test_the_c_leaky_relu_slope_is_pythons():
    """The C code's MS_LEAKY_SLOPE is defined once, from conv3x3.LEAKY_RELU_SLOPE."""
    slopes = re.findall(r'#define MS_LEAKY_SLOPE ([0-9.e+-]+)f', M.c_source())
    assert len(slopes) == 1 and np.float32(slopes[0]) == np.float32(conv3x3.LEAKY_RELU_SLOPE)


def assert_close(ours, ref):
    """float32 agreement: relative 1e-5, absolute 1e-6 of ref's largest magnitude."""
    ref = np.asarray(ref)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * max(float(np.abs(ref).max()), 1e-30))


def normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype('float32')


def values_and_grads(outputs, inputs, values, cotangents):
    """[outputs..., dL/dinputs...] with L = sum_k sum(outputs[k] * cotangents[k])."""
    cost = sum((y * c).sum() for y, c in zip(outputs, cotangents))
    fn = theano.function(inputs, outputs + T.grad(cost, inputs))
    return fn(*values)


def op_types(fn):
    return {type(node.op).__name__ for node in fn.maker.fgraph.toposort()}


# ---------------------------------------------------------------- against Theano's ops

@pytest.mark.parametrize('shape', SHAPES)
def test_mean_pool_pyramid_matches_mean_pool(shape):
    n, C, H, W, n_scales = shape
    rng = np.random.default_rng(1)
    x = T.tensor4('x')
    xv = normal(rng, (n, C, H, W))
    cots = [normal(rng, (n, C, H >> s, W >> s)) for s in range(n_scales)]
    ours = values_and_grads(M.mean_pool_pyramid(x, n_scales), [x], [xv], cots)
    ref = values_and_grads([reference_ops.mean_pool(x, 2 ** s) for s in range(n_scales)], [x], [xv], cots)
    assert len(ours) == len(ref) == n_scales + 1
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert_close(a, b)


def test_mean_pool_pyramid_gradient_of_some_levels():
    """Levels that do not reach the cost are left out of the gradient."""
    rng = np.random.default_rng(2)
    x = T.tensor4('x')
    xv, cot = normal(rng, (2, 3, 8, 8)), normal(rng, (2, 3, 2, 2))
    ours = values_and_grads([M.mean_pool_pyramid(x, 4)[2]], [x], [xv], [cot])
    ref = values_and_grads([reference_ops.mean_pool(x, 4)], [x], [xv], [cot])
    for a, b in zip(ours, ref):
        assert_close(a, b)


@pytest.mark.parametrize('activation', ACTIVATIONS)
@pytest.mark.parametrize('shape', SHAPES[:4])
def test_upsample_sum_matches_theano(shape, activation):
    n, C, H, W, n_scales = shape
    rng = np.random.default_rng(3)
    parts = [T.tensor4('p{}'.format(s)) for s in range(n_scales)]
    b = T.vector('b')
    values = [normal(rng, (n, C, H >> s, W >> s)) for s in range(n_scales)] + [normal(rng, C)]
    cot = normal(rng, (n, C, H, W))
    f = THEANO_ACTIVATION[activation]
    untied, untied_value = T.tensor3('b_untied'), normal(rng, (C, H, W))  # one bias per channel and pixel
    for bias, factor in ((b, 1.0), (None, 1.0 / 3), (untied, 1.0)):
        inputs = parts + ([bias] if bias is not None else [])
        bias_values = {None: [], b: [values[-1]], untied: [untied_value]}[bias]
        pre = factor * sum(reference_ops.upsample_nearest(p, 2 ** s) for s, p in enumerate(parts))
        if bias is not None:
            pre = pre + (b.dimshuffle('x', 0, 'x', 'x') if bias is b else untied.dimshuffle('x', 0, 1, 2))
        ref = values_and_grads([f(pre)], inputs, values[:n_scales] + bias_values, [cot])
        ours = values_and_grads([M.upsample_sum(parts, bias, activation, factor)], inputs,
                                values[:n_scales] + bias_values, [cot])
        for a, r in zip(ours, ref):
            assert a.shape == r.shape
            assert_close(a, r)


@pytest.mark.parametrize('activation', ACTIVATIONS[1:])
@pytest.mark.parametrize('shape', [(1, 1), (7, 3), (300, 64), (130, 5)])
def test_bias_activation_matches_theano(shape, activation):
    rng = np.random.default_rng(4)
    x, b = T.matrix('x'), T.vector('b')
    values = [normal(rng, shape, 2.0), normal(rng, shape[1])]
    cot = normal(rng, shape)
    ours = values_and_grads([M.bias_activation(x, b, activation)], [x, b], values, [cot])
    ref = values_and_grads([THEANO_ACTIVATION[activation](x + b)], [x, b], values, [cot])
    for a, r in zip(ours, ref):
        assert a.shape == r.shape
        assert_close(a, r)


def test_non_contiguous_inputs_and_new_shapes():
    """A transposed (non-contiguous) input, and a second call with other shapes (the output
    storage of the first is not reused)."""
    x, b = T.matrix('x'), T.vector('b')
    fn = theano.function([x, b], M.bias_activation(x.T, b, 'tanh'))
    rng = np.random.default_rng(5)
    for shape in ((5, 9), (3, 4)):
        xv, bv = normal(rng, shape), normal(rng, shape[0])
        assert_close(fn(xv, bv), np.tanh(xv.T.astype(np.float64) + bv))
    p0, p1 = T.tensor4('p0'), T.tensor4('p1')
    fn = theano.function([p0, p1], M.upsample_sum([p0.dimshuffle(0, 1, 3, 2), p1]))
    for n, h, w in ((2, 4, 6), (1, 6, 2)):
        a, c = normal(rng, (n, 2, w, h)), normal(rng, (n, 2, h // 2, w // 2))
        expected = a.transpose(0, 1, 3, 2) + np.kron(c, np.ones((1, 1, 2, 2), 'float32'))
        assert_close(fn(a, c), expected)


# ---------------------------------------------------------------- finite differences

def verify_grad(fun, values):
    theano.gradient.verify_grad(fun, values, n_tests=2, rng=np.random.RandomState(0), eps=1e-3,
                                abs_tol=2e-3, rel_tol=2e-3)


def away_from_zero(rng, shape, low=0.5):
    """Values of magnitude in [low, low + 1): far from the leaky ReLU's kink."""
    return (rng.choice([-1, 1], shape) * (low + rng.uniform(size=shape))).astype('float32')


def test_mean_pool_pyramid_verify_grad():
    rng = np.random.default_rng(6)
    verify_grad(lambda x: T.concatenate([v.flatten() for v in M.mean_pool_pyramid(x, 3)]),
                [normal(rng, (2, 3, 4, 8))])


@pytest.mark.parametrize('activation', ACTIVATIONS)
def test_upsample_sum_verify_grad(activation):
    rng = np.random.default_rng(7)
    # part 0 far from zero and the others small: the pre-activation stays away from 0
    values = ([away_from_zero(rng, (2, 3, 4, 8))]
              + [rng.uniform(-0.05, 0.05, (2, 3, 4 >> s, 8 >> s)).astype('float32') for s in (1, 2)]
              + [rng.uniform(-0.05, 0.05, 3).astype('float32')])
    verify_grad(lambda p0, p1, p2, b: M.upsample_sum([p0, p1, p2], b, activation, 0.5), values)
    values[-1] = rng.uniform(-0.05, 0.05, (3, 4, 8)).astype('float32')  # untied: per channel and pixel
    verify_grad(lambda p0, p1, p2, b: M.upsample_sum([p0, p1, p2], b, activation, 0.5), values)


def test_untied_bias_gradient_adds_the_images_in_order_in_float64():
    """The untied bias's gradient is sum_i g_i f'(pre_i) over the images i, each term float32,
    added in float64 in the images' order and rounded once: bit for bit the same as numpy's
    loop below (so it does not depend on how the C pass walks memory or on the threads)."""
    rng = np.random.default_rng(9)
    n, C, H, W = 37, 5, 6, 10
    x, g = normal(rng, (n, C, H, W)), normal(rng, (n, C, H, W))
    part, bias = T.tensor4('part'), T.tensor3('bias')
    y = M.upsample_sum([part], bias, 'leaky_relu')
    db = theano.function([part, bias], T.grad((y * g).sum(), bias))(x, np.zeros((C, H, W), 'float32'))
    slope = np.where(x > 0, np.float32(1), np.float32(conv3x3.LEAKY_RELU_SLOPE))
    expected = np.zeros((C, H, W))
    for i in range(n):
        expected += (g[i] * slope[i]).astype(np.float64)
    np.testing.assert_array_equal(db, expected.astype(np.float32))


@pytest.mark.parametrize('activation', ACTIVATIONS[1:])
def test_bias_activation_verify_grad(activation):
    rng = np.random.default_rng(8)
    values = [away_from_zero(rng, (6, 5)), rng.uniform(-0.2, 0.2, 5).astype('float32')]
    verify_grad(lambda x, b: M.bias_activation(x, b, activation), values)


# ---------------------------------------------------------------- accuracy

def ulps(ours, ref):
    """|ours - ref| in units of the float32 spacing at ref (ref in float64). The spacing is
    computed in float64 (2^(e - 24) for ref's float32 exponent e, at least float32's smallest
    denormal 2^-149): float32 spacings below 2^-126 are denormals, which flush to zero."""
    _, exponent = np.frexp(np.abs(ref).astype(np.float32).astype(np.float64))
    spacing = np.maximum(np.where(ref == 0, 0.0, np.ldexp(1.0, exponent - 24)), np.ldexp(1.0, -149))
    return np.abs(ours.astype(np.float64) - ref) / spacing


@pytest.mark.parametrize('activation', ['softplus', 'tanh'])
def test_activation_accuracy_in_ulps(activation):
    """f and f' (from the float32 output) within 3 ulp of float64 NumPy on [-20, 20] and on
    magnitudes 1e-30 to 10 (0.4 million points)."""
    grid = np.linspace(-20, 20, 200001)
    tiny = np.logspace(-30, 1, 100000)
    x = np.concatenate([grid, tiny, -tiny]).astype('float32')
    xs = T.vector('x')
    y = M.bias_activation(xs.reshape((1, -1)), T.zeros_like(xs), activation).flatten()
    out, slope = theano.function([xs], [y, T.grad(y.sum(), xs)])(x)
    x64, y64 = x.astype(np.float64), out.astype(np.float64)
    if activation == 'softplus':
        ref, ref_slope = np.logaddexp(0, x64), -np.expm1(-y64)
    else:
        ref, ref_slope = np.tanh(x64), (1 - y64) * (1 + y64)
    assert ulps(out, ref).max() <= 3
    assert ulps(slope, ref_slope).max() <= 3


# ---------------------------------------------------------------- extreme inputs

EXTREMES = np.array([100, -100, 1e-8, -1e-8, 0, 30, -30, 88, -88, np.inf, -np.inf, np.nan],
                    'float32')


@pytest.mark.parametrize('activation', ['softplus', 'tanh'])
def test_extreme_inputs_like_theano(activation):
    """Outputs and gradients at +-100, +-1e-8, 0, +-inf and NaN as Theano's ops give them,
    through both the upsample-sum and the bias-activation op; NaN in gives NaN out."""
    x = T.vector('x')
    ref_y = THEANO_ACTIVATION[activation](x)
    ref = theano.function([x], [ref_y, T.grad(ref_y.sum(), x)])(EXTREMES)
    ours_up = M.upsample_sum([x.reshape((1, 1, 1, -1))], activation=activation).flatten()
    ours_ba = M.bias_activation(x.reshape((1, -1)), T.zeros_like(x), activation).flatten()
    for y in (ours_up, ours_ba):
        ours = theano.function([x], [y, T.grad(y.sum(), x)])(EXTREMES)
        for a, r in zip(ours, ref):
            assert np.array_equal(np.isnan(a), np.isnan(r))
            assert np.isnan(a[-1])
            finite = ~np.isnan(r)
            # Theano's softplus is exactly 0 below -30; ours is e^x there (e^-100 = 3.7e-44)
            np.testing.assert_allclose(a[finite], r[finite], rtol=1e-6, atol=1e-12)
    if activation == 'tanh':  # tanh x = x near 0 (through expm1)
        np.testing.assert_array_equal(theano.function([x], ours_ba)(EXTREMES[2:4]), EXTREMES[2:4])


def test_leaky_relu_extremes():
    """NaN in gives NaN out and NaN gradient; -inf gives -inf (Theano's relu gives NaN
    there: 0.525 x + 0.475 |x|)."""
    x = T.vector('x')
    y = M.bias_activation(x.reshape((1, -1)), T.zeros_like(x), 'leaky_relu').flatten()
    values = np.array([np.nan, np.inf, -np.inf, 2.0, -2.0], 'float32')
    out, grad = theano.function([x], [y, T.grad(y.sum(), x)])(values)
    np.testing.assert_array_equal(out, np.float32([np.nan, np.inf, -np.inf, 2.0, -0.1]))
    np.testing.assert_array_equal(grad, np.float32([np.nan, 1.0, 0.05, 1.0, 0.05]))


def test_nan_in_a_coarse_part_reaches_its_block():
    p0, p1 = T.tensor4('p0'), T.tensor4('p1')
    y = M.upsample_sum([p0, p1], activation='softplus')
    fn = theano.function([p0, p1], [y] + T.grad(y.sum(), [p0, p1]))
    a, c = np.zeros((1, 1, 4, 4), 'float32'), np.zeros((1, 1, 2, 2), 'float32')
    c[0, 0, 1, 0] = np.nan
    out, g0, g1 = fn(a, c)
    nan = np.zeros((4, 4), bool)
    nan[2:, :2] = True
    np.testing.assert_array_equal(np.isnan(out[0, 0]), nan)
    np.testing.assert_array_equal(np.isnan(g0[0, 0]), nan)
    np.testing.assert_array_equal(np.isnan(g1[0, 0]), [[False, False], [True, False]])


# ---------------------------------------------------------------- errors

def run_pyramid(shape, n_scales):
    x = T.tensor4('x')
    theano.function([x], M.mean_pool_pyramid(x, n_scales))(np.zeros(shape, 'float32'))


def test_pyramid_sides_not_divisible():
    with pytest.raises(ValueError, match=r'sides \(12 x 10\) must be divisible by 2\^\(n_scales - 1\) = 4'):
        run_pyramid((1, 2, 12, 10), 3)
    run_pyramid((1, 2, 12, 10), 2)


def test_upsample_sum_bad_shapes():
    p0, p1, b = T.tensor4('p0'), T.tensor4('p1'), T.vector('b')
    fn = theano.function([p0, p1, b], M.upsample_sum([p0, p1], b))
    z = lambda *shape: np.zeros(shape, 'float32')  # noqa: E731
    fn(z(2, 3, 8, 6), z(2, 3, 4, 3), z(3))
    with pytest.raises(ValueError, match=r'part 1 has shape \(2, 3, 4, 4\), but .* makes it \(2, 3, 4, 3\)'):
        fn(z(2, 3, 8, 6), z(2, 3, 4, 4), z(3))
    with pytest.raises(ValueError, match=r'part 1 has shape \(2, 2, 4, 3\)'):
        fn(z(2, 3, 8, 6), z(2, 2, 4, 3), z(3))
    with pytest.raises(ValueError, match='the bias has 4 values for 3 channels'):
        fn(z(2, 3, 8, 6), z(2, 3, 4, 3), z(4))
    with pytest.raises(ValueError, match=r'output sides \(8 x 6\) must be divisible by 2\^2'):
        theano.function([p0, p1], M.upsample_sum([p0, p1, p1]))(z(2, 3, 8, 6), z(2, 3, 4, 3))
    b3 = T.tensor3('b3')
    fn = theano.function([p0, b3], M.upsample_sum([p0], b3, 'tanh'))
    fn(z(2, 3, 8, 6), z(3, 8, 6))
    with pytest.raises(ValueError, match='the untied bias is 8 x 5 per channel for an output of 8 x 6'):
        fn(z(2, 3, 8, 6), z(3, 8, 5))
    with pytest.raises(ValueError, match='the bias has 2 values for 3 channels'):
        fn(z(2, 3, 8, 6), z(2, 8, 6))


def test_bias_activation_bad_shape():
    x, b = T.matrix('x'), T.vector('b')
    fn = theano.function([x, b], M.bias_activation(x, b, 'tanh'))
    with pytest.raises(ValueError, match='b has 4 values for x of 3 columns'):
        fn(np.zeros((2, 3), 'float32'), np.zeros(4, 'float32'))


def test_bad_types_and_arguments():
    with pytest.raises(TypeError, match='x must be a 4-axis float32 tensor, got float64'):
        M.mean_pool_pyramid(T.dtensor4(), 2)
    with pytest.raises(TypeError, match='part 1 must be a 4-axis float32 tensor, got float32 of 3 axes'):
        M.upsample_sum([T.tensor4(), T.tensor3()])
    with pytest.raises(TypeError, match='b must be a 1-axis float32 tensor'):
        M.bias_activation(T.matrix(), T.matrix(), 'tanh')
    with pytest.raises(ValueError, match='activation must be one of'):
        M.bias_activation(T.matrix(), T.vector(), 'relu')
    with pytest.raises(ValueError, match='n_scales must be 1 to 32, not 0'):
        M.mean_pool_pyramid(T.tensor4(), 0)


# ---------------------------------------------------------------- the training graph

def test_training_graph_uses_the_ops():
    """One multi-scale layer per placement and a per-pixel layer, forward and T.grad: the
    compiled graph holds the ops and no Repeat or image-sized Alloc (T.repeat's upsampling)."""
    rng = np.random.default_rng(9)
    n_scales, C = 3, 4
    x = T.tensor4('x')
    Ws = [theano.shared(normal(rng, (C, 1 if k < n_scales else C, 3, 3), 0.3)) for k in range(2 * n_scales)]
    bs = [theano.shared(normal(rng, C)) for _ in range(2 * n_scales)]
    V, c = theano.shared(normal(rng, (C, 5))), theano.shared(normal(rng, 5))

    def conv(h, k):
        return T.nnet.conv2d(h, Ws[k], border_mode='half', filter_flip=False)

    levels = M.mean_pool_pyramid(x, n_scales)  # 'after_sum' (paper)
    h = M.upsample_sum([conv(v, s) for s, v in enumerate(levels)], sum(bs[:n_scales]), 'softplus')
    levels = M.mean_pool_pyramid(h, n_scales)  # 'per_scale' (released code)
    parts = [R.leaky_relu(conv(v, n_scales + s) + bs[n_scales + s].dimshuffle('x', 0, 'x', 'x'))
             for s, v in enumerate(levels)]
    h = M.upsample_sum(parts, factor=1.0 / n_scales)
    pixels = h.dimshuffle(0, 2, 3, 1).reshape((-1, C))
    cost = T.sqr(M.bias_activation(T.dot(pixels, V), c, 'tanh')).sum()
    params = Ws + bs + [V, c]
    fn = theano.function([x], [cost] + T.grad(cost, params))
    types = op_types(fn)
    for name in ('MeanPoolPyramid', 'UpsampleSum', 'UpsampleSumGrad', 'BiasActivation',
                 'BiasActivationGrad'):
        assert name in types
    assert 'RepeatOp' not in types
    allocs = [node for node in fn.maker.fgraph.toposort()
              if type(node.op).__name__ == 'Alloc' and node.outputs[0].ndim >= 4]
    assert not allocs
    out = fn(normal(rng, (2, 1, 8, 12)))
    assert all(np.all(np.isfinite(v)) for v in out)
