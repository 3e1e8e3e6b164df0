"""conv3x3.py: the Winograd and im2col 'same' 3x3 correlations against Theano's CorrMM
(forward and gradients), the fused activations, finite differences, error messages and
the compiled training graph."""
import os
import subprocess
import sys

import numpy as np
import pytest
import theano
import theano.tensor as T

import conv3x3 as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # compiles the C op and its gradients (python -m pytest -m "not slow" leaves it out)

IMPLS = ('winograd', 'im2col')
# (n, C_in, C_out, H, W): odd sizes, 1 and 3 input channels, pooled scales (32 -> 16 -> 8
# -> 4, 28 -> 14 -> 7) down to 2x2 and 1x1, batch 1 and 5, C_out != C_in; rows of 8 tiles
# and more (conv3x3.c's vectors of 8), 14 and an odd 9 of them; 196 tiles of 6 -> 5 channels
# (on AVX2 the weight gradient's own products, from 128 tiles on); and more input channels
# than conv3x3.c's own products take (C3_OWN_PRODUCT_MAX_CIN: sgemm_, as for CIFAR-10).
SHAPES = [(5, 3, 4, 7, 5), (1, 1, 3, 28, 28), (5, 3, 6, 4, 4), (1, 6, 2, 7, 7),
          (5, 4, 3, 2, 2), (5, 2, 3, 1, 1), (1, 5, 5, 16, 16), (2, 3, 4, 9, 17), (1, 6, 5, 28, 28),
          (2, 40, 36, 8, 6)]
# Room for 3 images of shape (8, 6, 6) under Winograd (2 under im2col): 7 images make
# several blocks and a partial last one.
SMALL_WORKSPACE = 3 * 16 * (8 + 8) * 9


def tolerance(ref):
    """Absolute float32 tolerance for comparing with ref: 1e-4 of its largest magnitude."""
    return 1e-4 * max(float(np.abs(ref).max()), 1e-30)


def random_problem(shape, seed=0):
    """Inputs x, W, b and an output cotangent for an (n, C_in, C_out, H, W) shape."""
    n, ci, co, h, w = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, ci, h, w)).astype('float32'),
            rng.standard_normal((co, ci, 3, 3)).astype('float32'),
            rng.standard_normal(co).astype('float32'),
            rng.standard_normal((n, co, h, w)).astype('float32'))


def value_and_grads(build, x, W, b, cot):
    """[y, dL/dx, dL/dW, dL/db] with L = sum(y * cot) for y = build(x, W, b)."""
    xs, Ws, bs = T.tensor4('x'), T.tensor4('W'), T.vector('b')
    y = build(xs, Ws, bs)
    fn = theano.function([xs, Ws, bs], [y] + T.grad((y * cot).sum(), [xs, Ws, bs]))
    return fn(x, W, b)


def corrmm(x, W, b, f=None):
    """Theano's own graph: conv2d (CorrMM) plus bias, through f."""
    pre = T.nnet.conv2d(x, W, border_mode='half', filter_flip=False) + b.dimshuffle('x', 0, 'x', 'x')
    return pre if f is None else f(pre)


def assert_all_close(got, want):
    """Each of [y, dx, dW, db] within 1e-4 of the reference's largest magnitude."""
    for name, g, r in zip(('y', 'dx', 'dW', 'db'), got, want):
        assert g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=tolerance(r), err_msg=name)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('shape', SHAPES)
def test_matches_corrmm_with_gradients(impl, shape):
    x, W, b, cot = random_problem(shape)
    want = value_and_grads(corrmm, x, W, b, cot)
    got = value_and_grads(lambda x, W, b: C.conv3x3(x, W, b, impl=impl), x, W, b, cot)
    assert_all_close(got, want)


@pytest.mark.parametrize('impl', IMPLS + ('auto',))
def test_blocks_of_images(impl):
    """Several blocks of images give the same result as CorrMM."""
    x, W, b, cot = random_problem((7, 8, 8, 6, 6), seed=1)
    want = value_and_grads(corrmm, x, W, b, cot)
    got = value_and_grads(lambda x, W, b: C.conv3x3(x, W, b, impl=impl, workspace=SMALL_WORKSPACE),
                          x, W, b, cot)
    assert_all_close(got, want)


# A child process computing [y, dx, dW, db] of random_problem(shape) with Winograd blocks of
# `workspace` floats (argv: output file, shape, workspace), at the thread count of its environment.
CHILD = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import numpy as np
import conv3x3 as C
import test_conv3x3 as t
x, W, b, cot = t.random_problem(tuple(map(int, sys.argv[2].split(','))), seed=7)
out = t.value_and_grads(lambda x, W, b: C.conv3x3(x, W, b, 'leaky_relu', 'winograd', int(sys.argv[3])),
                        x, W, b, cot)
np.savez(sys.argv[1], *out)
"""


def winograd_in_child(tmp_path, threads, shape, workspace):
    """[y, dx, dW, db] from a child process of `threads` OpenMP threads."""
    out = tmp_path / 'threads{}.npz'.format(threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    code = CHILD.format(root=ROOT, tests=os.path.join(ROOT, 'tests'))
    subprocess.run([sys.executable, '-c', code, str(out), ','.join(map(str, shape)), str(workspace)],
                   env=env, check=True, capture_output=True, timeout=600)
    got = np.load(out)
    return [got['arr_{}'.format(k)] for k in range(4)]


@pytest.mark.parametrize('shape', [(7, 8, 8, 6, 6), (5, 8, 8, 17, 29)])
def test_threads_share_blocks(tmp_path, shape):
    """Three threads take the blocks of 7 or 5 images (uneven shares; rows of 3 tiles, and of
    15 in vectors, 135 tiles an image: on AVX2 the weight gradient's own products): the output and the input gradient are those of one thread bit for bit (each
    image is computed alone); the weight gradient adds the threads' sums in another order, so it
    agrees within float32 rounding; both match CorrMM."""
    one, three = (winograd_in_child(tmp_path, threads, shape, SMALL_WORKSPACE) for threads in (1, 3))
    for name, a, b in zip(('y', 'dx', 'db'), (one[0], one[1], one[3]), (three[0], three[1], three[3])):
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_allclose(three[2], one[2], rtol=1e-5, atol=tolerance(one[2]))
    x, W, b, cot = random_problem(shape, seed=7)
    assert_all_close(three, value_and_grads(lambda x, W, b: corrmm(x, W, b, lambda v: T.nnet.relu(v, alpha=0.05)),
                                            x, W, b, cot))


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('activation,f', [('leaky_relu', lambda v: T.nnet.relu(v, alpha=0.05)),
                                          ('softplus', T.nnet.softplus)])
def test_fused_activation_matches_theano(impl, activation, f):
    x, W, b, cot = random_problem((5, 3, 4, 7, 5), seed=2)
    want = value_and_grads(lambda x, W, b: corrmm(x, W, b, f), x, W, b, cot)
    got = value_and_grads(lambda x, W, b: C.conv3x3(x, W, b, activation, impl), x, W, b, cot)
    assert_all_close(got, want)


def test_softplus_is_stable_for_large_inputs():
    x = np.full((1, 1, 2, 2), 1.0, 'float32')
    W = np.zeros((1, 1, 3, 3), 'float32')
    W[0, 0, 1, 1] = 1.0
    xs = T.tensor4('x')
    fn = theano.function([xs], C.conv3x3(xs, W, activation='softplus'))
    np.testing.assert_allclose(fn(100 * x), 100 * x, rtol=1e-6)
    np.testing.assert_allclose(fn(-50 * x), np.exp(-50 * x), rtol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
def test_input_gradient_is_forward_with_flipped_filters(impl):
    """dL/dx = corr(dy, W') with W'[ci, co, i, j] = W[co, ci, 2 - i, 2 - j]."""
    x, W, _, dy = random_problem((2, 3, 5, 6, 7), seed=3)
    xs, ys = T.tensor4('x'), T.tensor4('dy')
    want = theano.function([xs, ys], T.grad((T.nnet.conv2d(xs, W, border_mode='half', filter_flip=False)
                                             * ys).sum(), xs))(x, dy)
    flipped = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(theano.function([], C.flip_filters(T.constant(W)))(), flipped)
    got = theano.function([ys], C.conv3x3(ys, flipped, impl=impl))(dy)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=tolerance(want))


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('activation', [None, 'softplus'])
def test_verify_grad(impl, activation):
    x, W, b, _ = random_problem((2, 3, 2, 5, 4), seed=4)
    theano.gradient.verify_grad(lambda x, W, b: C.conv3x3(x, W, b, activation, impl),
                                [x, W, b], n_tests=2, rng=np.random.RandomState(0),
                                eps=1e-3, abs_tol=1e-2, rel_tol=1e-2)


def test_bad_shapes_raise_clear_errors():
    xs, Ws = T.tensor4('x'), T.tensor4('W')
    fn = theano.function([xs, Ws], C.conv3x3(xs, Ws))
    x = np.zeros((2, 3, 8, 8), 'float32')
    with pytest.raises(ValueError, match='kernel must be 3x3'):
        fn(x, np.zeros((4, 3, 5, 5), 'float32'))
    with pytest.raises(ValueError, match="x's channels .* must equal W's input channels"):
        fn(x, np.zeros((4, 2, 3, 3), 'float32'))
    with pytest.raises(ValueError, match='b has 3 entries but W has 4 output channels'):
        theano.function([xs, Ws], C.conv3x3(xs, Ws, np.zeros(3, 'float32')))(
            x, np.zeros((4, 3, 3, 3), 'float32'))
    with pytest.raises(TypeError, match='4-axis float32'):
        C.conv3x3(T.matrix(), Ws)
    with pytest.raises(TypeError, match='4-axis float32'):
        C.conv3x3(T.tensor4(dtype='float64'), Ws)
    with pytest.raises(ValueError, match='activation must be one of'):
        C.conv3x3(xs, Ws, activation='relu')
    with pytest.raises(ValueError, match='impl must be one of'):
        C.conv3x3(xs, Ws, impl='fft')


@pytest.mark.parametrize('impl', IMPLS)
def test_training_graph_uses_conv3x3_ops_only(impl):
    x, W, b, _ = random_problem((2, 3, 4, 8, 8), seed=5)
    Ws, bs, xs = theano.shared(W), theano.shared(b), T.tensor4('x')
    y = C.conv3x3(C.conv3x3(xs, Ws, bs, 'leaky_relu', impl), Ws.dimshuffle(1, 0, 2, 3),
                  activation='softplus', impl=impl)
    fn = theano.function([xs], T.grad(y.sum(), [xs, Ws, bs]))
    ops = {type(node.op).__name__ for node in fn.maker.fgraph.apply_nodes}
    assert {'Conv3x3', 'Conv3x3GradW'} <= ops
    assert not {name for name in ops if 'CorrMM' in name or 'AbstractConv' in name}
    fn(x)


def test_ops_compare_by_their_properties():
    assert C.Conv3x3('winograd', 'softplus') == C.Conv3x3('winograd', 'softplus')
    assert hash(C.Conv3x3('im2col')) == hash(C.Conv3x3('im2col'))
    assert C.Conv3x3('winograd') != C.Conv3x3('im2col')
    assert C.Conv3x3('winograd', 'softplus') != C.Conv3x3('winograd', 'leaky_relu')
    assert C.Conv3x3GradW('winograd') == C.Conv3x3GradW('winograd') != C.Conv3x3GradW('im2col')
