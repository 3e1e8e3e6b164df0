"""A fast 'same' 3x3 cross-correlation for Theano on CPU, with its gradients.

conv3x3(x, W, b, activation) is f(T.nnet.conv2d(x, W, border_mode='half',
filter_flip=False) + b) computed by one C op (conv3x3.c), in one of two ways:

- 'winograd': Winograd F(2x2, 3x3) (Lavin & Gray 2016, "Fast Algorithms for
  Convolutional Neural Networks"): U = G g G^T, V = B^T d B, M[p] = U[p] V[p] for the 16
  tile positions (OpenBLAS sgemm), Y = A^T m A, plus bias and activation;
- 'im2col': one multi-threaded sgemm per block of images.

The gradient with respect to x is the same op on the pre-activation gradient with the
filters flipped and transposed; the weight gradient is its own op (Conv3x3GradW).
"""
import hashlib
import os

import numpy as np

import backend  # first: it configures Theano before Theano is imported
import theano.tensor as T
from theano import gof
from theano.tensor import blas, blas_headers

C_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'conv3x3.c')
C_CODE_VERSION = 1  # raise when the C templates below change (conv3x3.c is hashed)

IMPLS = ('winograd', 'im2col', 'auto')  # index = the C code's impl number
ACTIVATIONS = (None, 'leaky_relu', 'softplus')  # index = the C code's activation number
# The leaky ReLU's slope for negatives (released code), its one definition: conv3x3.c takes
# it as an argument, multiscale.py defines multiscale.c's MS_LEAKY_SLOPE from it.
LEAKY_RELU_SLOPE = 0.05
# GCC keeps a loop with `v > 0 ? v : slope * v` (the leaky ReLU and its gradient) scalar
# without AVX-512's masked operations, since the multiply might raise a floating-point
# exception that the branch avoided; no floating-point exception is ever looked at here,
# and the values are the same. Vectorised on AVX2 (x86-64-v3), MNIST's four UpsampleSum ops
# took 20-39 ms each instead of 3-5 ms on AVX-512 (docs/performance.md).
FAST_SELECTS = ['-fno-trapping-math']
# Floats of transformed buffers per block of images: 256 kB, a block that stays in the
# core's cache. Each thread takes whole blocks (conv3x3.c). Dead leaves' 32 -> 32 channels at
# 32x32, forward and both gradients: one thread 0.055 s against 0.094 s with 16 MB blocks;
# two threads 0.031 s against 0.067 s when they shared out each 16 MB block
# (docs/performance.md).
WORKSPACE = 64 * 2 ** 10


def c_source():
    """The text of conv3x3.c."""
    with open(C_SOURCE) as f:
        return f.read()


def as_float32_4d(value, name):
    """value as a 4-axis float32 Theano variable, or a TypeError naming it."""
    var = T.as_tensor_variable(value)
    if var.ndim != 4 or var.dtype != 'float32':
        raise TypeError('conv3x3: {} must be a 4-axis float32 tensor, got {} of {} axes'
                        .format(name, var.dtype, var.ndim))
    return var


def activation_grad(activation, y, gy):
    """The gradient with respect to the pre-activation, from the output y = f(pre) alone.

    leaky ReLU: f' = 1 where y > 0 else the slope; softplus: f' = sigmoid(pre) = 1 - e^-y.
    """
    if activation == 'leaky_relu':
        return T.switch(y > 0, gy, np.float32(LEAKY_RELU_SLOPE) * gy)
    if activation == 'softplus':
        return -gy * T.expm1(-y)
    return gy


def flip_filters(W):
    """W' (C_in, C_out, 3, 3) with W'[ci, co, i, j] = W[co, ci, 2 - i, 2 - j]: the filters
    whose 'same' correlation with dy gives the gradient with respect to x."""
    return W[:, :, ::-1, ::-1].dimshuffle(1, 0, 2, 3)


class Conv3x3Base(gof.OpenMPOp):
    """The C set-up shared by the ops: conv3x3.c, OpenBLAS (blas.ldflags) and OpenMP."""

    def __init__(self, impl, workspace, openmp=None):
        if impl not in IMPLS:
            raise ValueError('conv3x3: impl must be one of {}, not {!r}'.format(IMPLS, impl))
        super().__init__(openmp=openmp)
        self.impl, self.workspace = impl, int(workspace)

    def c_support_code(self):
        return blas_headers.blas_header_text() + c_source()

    def c_headers(self):
        return ['<math.h>', '<stdlib.h>', '<string.h>'] + super().c_headers()

    def c_libraries(self):
        return blas.ldflags()

    def c_lib_dirs(self):
        return blas.ldflags(libs=False, libs_dir=True)

    def c_header_dirs(self):
        return blas.ldflags(libs=False, include_dir=True)

    def c_compile_args(self):
        return blas.ldflags(libs=False, flags=True) + super().c_compile_args() + FAST_SELECTS

    def c_code_cache_version(self):
        digest = hashlib.sha1(c_source().encode()).hexdigest()[:16]
        return (C_CODE_VERSION, digest, self.openmp, blas_headers.blas_header_version())


class Conv3x3(Conv3x3Base):
    """y = f(corr(x, W) + b), the 'same' 3x3 cross-correlation with bias and activation.

    x (n, C_in, H, W), W (C_out, C_in, 3, 3), b (C_out,) or absent -> y (n, C_out, H, W).
    workspace: floats of transformed buffers per block of images (more images, more memory).
    """
    __props__ = ('impl', 'activation', 'workspace')

    def __init__(self, impl='winograd', activation=None, workspace=WORKSPACE, openmp=None):
        if activation not in ACTIVATIONS:
            raise ValueError('conv3x3: activation must be one of {}, not {!r}'
                             .format(ACTIVATIONS, activation))
        super().__init__(impl, workspace, openmp)
        self.activation = activation

    def make_node(self, x, W, b=None):
        x, W = as_float32_4d(x, 'x'), as_float32_4d(W, 'W')
        inputs = [x, W]
        if b is not None:
            b = T.as_tensor_variable(b)
            if b.ndim != 1 or b.dtype != 'float32':
                raise TypeError('conv3x3: b must be a 1-axis float32 tensor, got {} of {} axes'
                                .format(b.dtype, b.ndim))
            inputs.append(b)
        y = T.TensorType('float32', (x.broadcastable[0], W.broadcastable[0], False, False))()
        return gof.Apply(self, inputs, [y])

    def infer_shape(self, node, shapes):
        (n, _, H, W), (C_out, _, _, _) = shapes[:2]
        return [(n, C_out, H, W)]

    def L_op(self, inputs, outputs, output_grads):
        x, W = inputs[:2]
        dpre = activation_grad(self.activation, outputs[0], output_grads[0])  # (n, C_out, H, W)
        grads = [Conv3x3(self.impl, workspace=self.workspace)(dpre, flip_filters(W)),
                 Conv3x3GradW(self.impl, self.workspace)(x, dpre)]
        if len(inputs) == 3:
            # float64 accumulation: measured as fast as float32 on CIFAR-10's 20M-element
            # gradient (20 ms either way) and 400x more accurate (docs/performance.md)
            grads.append(dpre.sum(axis=(0, 2, 3), acc_dtype='float64'))
        return grads

    def c_code(self, node, name, inputs, outputs, sub):
        b = inputs[2] if len(inputs) == 3 else 'NULL'
        return """
        if (c3_forward({x}, {W}, {b}, &{y}, {impl}, {act}, {slope}f, {workspace})) {{
            {fail}
        }}""".format(x=inputs[0], W=inputs[1], b=b, y=outputs[0], impl=IMPLS.index(self.impl),
                     act=ACTIVATIONS.index(self.activation), slope=repr(LEAKY_RELU_SLOPE),
                     workspace=self.workspace, fail=sub['fail'])


class Conv3x3GradW(Conv3x3Base):
    """dW = d(sum dy * corr(x, W)) / dW: x (n, C_in, H, W), dy (n, C_out, H, W) ->
    dW (C_out, C_in, 3, 3). Winograd: dU[p] = sum over tiles dM[p] V[p]^T with
    dM = A dY A^T, then dW = G^T dU G; im2col: dy (C_out, n H W) col(x)^T."""
    __props__ = ('impl', 'workspace')

    def __init__(self, impl='winograd', workspace=WORKSPACE, openmp=None):
        super().__init__(impl, workspace, openmp)

    def make_node(self, x, dy):
        x, dy = as_float32_4d(x, 'x'), as_float32_4d(dy, 'dy')
        dW = T.TensorType('float32', (dy.broadcastable[1], x.broadcastable[1], False, False))()
        return gof.Apply(self, [x, dy], [dW])

    def infer_shape(self, node, shapes):
        (_, C_in, _, _), (_, C_out, _, _) = shapes
        return [(C_out, C_in, 3, 3)]

    def c_code(self, node, name, inputs, outputs, sub):
        return """
        if (c3_grad_weights({x}, {dy}, &{dW}, {impl}, {workspace})) {{
            {fail}
        }}""".format(x=inputs[0], dy=inputs[1], dW=outputs[0], impl=IMPLS.index(self.impl),
                     workspace=self.workspace, fail=sub['fail'])


def conv3x3(x, W, b=None, activation=None, impl='winograd', workspace=None):
    """f(corr(x, W) + b): the 'same' 3x3 cross-correlation of x (n, C_in, H, W) with
    W (C_out, C_in, 3, 3), plus b (C_out,) per channel, through f in the same C pass.

    activation: None, 'leaky_relu' (slope 0.05) or 'softplus'. impl: 'winograd',
    'im2col', or 'auto' (chosen at run time from C_in, see conv3x3.c). workspace: floats
    per block of images.
    """
    op = Conv3x3(impl, activation, workspace or WORKSPACE)
    return op(x, W) if b is None else op(x, W, b)
