"""Fast C ops (CPU, float32) for the element-wise work of the multi-scale convolution
(Appendix D.2.1) and of the per-pixel layers, with their gradients.

- mean_pool_pyramid(x, n_scales): [x, pool_2(x), pool_4(x), ...], regression.mean_pool
  at every scale in one pass;
- upsample_sum(parts, bias, activation, factor): f(factor sum_s up_{2^s}(parts[s]) + b),
  tests/reference_ops.upsample_nearest of every scale, the sum, the bias (one per channel, or untied:
  one per channel and pixel) and f in one pass;
- bias_activation(x, b, activation): f(x + b) for the per-pixel layers after a Dot22.

Each gradient is one pass as well, from the op's output alone: f'(pre) = sigmoid(pre)
= 1 - e^-y for softplus, 1 - y^2 for tanh, 1 or the slope for the leaky ReLU.
The C code (multiscale.c) evaluates exp, expm1 and log1p with float32 polynomials of
its own that GCC vectorises: about 2.5 ulp at most for softplus and tanh.
"""
import hashlib
import os

import numpy as np

import backend  # noqa: F401  (configures Theano before it is imported)
import theano.tensor as T
from theano import gof
from theano.gradient import DisconnectedType, grad_not_implemented

import conv3x3

C_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multiscale.c')
C_CODE_VERSION = 2  # raise when the C templates below change (multiscale.c is hashed)

ACTIVATIONS = (None, 'softplus', 'tanh', 'leaky_relu')  # index = the C code's activation number
MAX_PARTS = 32  # the C code's fixed-size arrays of parts and levels


def c_source():
    """The C code of the ops: the leaky ReLU's slope (conv3x3.LEAKY_RELU_SLOPE), then multiscale.c."""
    with open(C_SOURCE) as f:
        return '#define MS_LEAKY_SLOPE {}\n'.format(c_float(conv3x3.LEAKY_RELU_SLOPE)) + f.read()


def c_float(value):
    """A float32 value as a C literal that reads back to the same float."""
    return '{:.9e}f'.format(float(value))


def as_float32(value, ndim, who, name):
    """value as a float32 Theano variable of ndim axes, or a TypeError naming it."""
    var = T.as_tensor_variable(value)
    if var.ndim != ndim or var.dtype != 'float32':
        raise TypeError('{}: {} must be a {}-axis float32 tensor, got {} of {} axes'
                        .format(who, name, ndim, var.dtype, var.ndim))
    return var


def check_activation(activation, who):
    if activation not in ACTIVATIONS:
        raise ValueError('{}: activation must be one of {}, not {!r}'.format(who, ACTIVATIONS, activation))


def like(grad, var):
    """grad with var's broadcastable pattern, as Theano expects of a gradient."""
    return T.patternbroadcast(grad, var.broadcastable)


class MultiscaleOp(gof.OpenMPOp):
    """The C set-up shared by the ops: multiscale.c and OpenMP. -fopenmp-simd makes the
    `omp simd` loops vectorise also when Theano's openmp flag is off; FAST_SELECTS lets
    them vectorise on AVX2 too."""

    def c_support_code(self):
        return c_source()

    def c_headers(self):
        return ['<math.h>', '<stdint.h>', '<stdlib.h>', '<string.h>'] + super().c_headers()

    def c_compile_args(self):
        return super().c_compile_args() + ['-fopenmp-simd'] + conv3x3.FAST_SELECTS

    def c_code_cache_version(self):
        digest = hashlib.sha1(c_source().encode()).hexdigest()[:16]
        return (C_CODE_VERSION, digest, self.openmp)


class MeanPoolPyramid(MultiscaleOp):
    """x (n, C, H, W) -> the means over 2^s x 2^s blocks for s = 1 .. n_scales - 1, each
    level pooled by 2 from the one before."""
    __props__ = ('n_scales',)

    def __init__(self, n_scales, openmp=None):
        if not 2 <= n_scales <= MAX_PARTS:
            raise ValueError('MeanPoolPyramid: n_scales must be 2 to {}, not {}'.format(MAX_PARTS, n_scales))
        super().__init__(openmp=openmp)
        self.n_scales = n_scales

    def make_node(self, x):
        x = as_float32(x, 4, 'mean_pool_pyramid', 'x')
        bcast = x.broadcastable[:2] + (False, False)
        return gof.Apply(self, [x], [T.TensorType('float32', bcast)() for _ in range(self.n_scales - 1)])

    def infer_shape(self, node, shapes):
        n, C, H, W = shapes[0]
        return [(n, C, H // 2 ** s, W // 2 ** s) for s in range(1, self.n_scales)]

    def L_op(self, inputs, outputs, output_grads):
        """dx = sum_s up_{2^s}(g_s) / 4^s over the levels that reach the cost."""
        x, = inputs
        levels = [(s, g) for s, g in enumerate(output_grads, 1) if not isinstance(g.type, DisconnectedType)]
        if not levels:
            return [x.zeros_like()]
        op = UpsampleSum(tuple(s for s, _ in levels), tuple(0.25 ** s for s, _ in levels))
        return [like(op(*[g for _, g in levels]), x)]

    def c_code(self, node, name, inputs, outputs, sub):
        return """
        {{
            PyArrayObject **levels[] = {{{levels}}};
            if (ms_pyramid({x}, {count}, levels)) {{
                {fail}
            }}
        }}""".format(x=inputs[0], count=len(outputs), levels=', '.join('&' + o for o in outputs),
                     fail=sub['fail'])


class UpsampleSum(MultiscaleOp):
    """y = f(sum_k weights[k] up_{2^shifts[k]}(parts[k]) + b): parts (n, C, H / 2^shift, W /
    2^shift); b (C,) when bias_ndim is 1, (C, H, W) when it is 3 (untied), none when 0.
    Gradient: UpsampleSumGrad."""
    __props__ = ('shifts', 'weights', 'activation', 'bias_ndim')

    def __init__(self, shifts, weights, activation=None, bias_ndim=0, openmp=None):
        check_activation(activation, 'upsample_sum')
        if not 1 <= len(shifts) <= MAX_PARTS or len(weights) != len(shifts):
            raise ValueError('upsample_sum: 1 to {} parts, each with one weight'.format(MAX_PARTS))
        if len(set(shifts)) != len(shifts) or not all(0 <= s < MAX_PARTS for s in shifts):
            raise ValueError('upsample_sum: shifts must be distinct, 0 to {}, not {}'.format(MAX_PARTS - 1, shifts))
        if bias_ndim not in (0, 1, 3):
            raise ValueError('upsample_sum: the bias has 1 axis (C,) or 3 (C, H, W), not {}'.format(bias_ndim))
        super().__init__(openmp=openmp)
        self.shifts = tuple(int(s) for s in shifts)
        self.weights = tuple(float(np.float32(w)) for w in weights)
        self.activation, self.bias_ndim = activation, int(bias_ndim)

    def make_node(self, *inputs):
        n_parts, has_bias = len(self.shifts), bool(self.bias_ndim)
        if len(inputs) != n_parts + has_bias:
            raise TypeError('upsample_sum: expected {} parts{}, got {} inputs'.format(
                n_parts, ' and a bias' if has_bias else '', len(inputs)))
        parts = [as_float32(p, 4, 'upsample_sum', 'part {}'.format(k)) for k, p in enumerate(inputs[:n_parts])]
        bias = [as_float32(inputs[-1], self.bias_ndim, 'upsample_sum', 'bias')] if has_bias else []
        y = T.TensorType('float32', parts[0].broadcastable[:2] + (False, False))()
        return gof.Apply(self, parts + bias, [y])

    def infer_shape(self, node, shapes):
        n, C, h, w = shapes[0]
        return [(n, C, h * 2 ** self.shifts[0], w * 2 ** self.shifts[0])]

    def L_op(self, inputs, outputs, output_grads):
        grad_op = UpsampleSumGrad(self.shifts, self.weights, self.activation, self.bias_ndim)
        y_in = [outputs[0]] if self.activation else []
        grads = grad_op(*(y_in + [output_grads[0]]), return_list=True)
        return [like(g, v) for g, v in zip(grads, inputs)]

    def c_code(self, node, name, inputs, outputs, sub):
        n_parts = len(self.shifts)
        return """
        {{
            PyArrayObject *parts[] = {{{parts}}};
            static const int shifts[] = {{{shifts}}};
            static const float weights[] = {{{weights}}};
            if (ms_upsample_sum(parts, {n_parts}, shifts, weights, {bias}, {act}, &{y})) {{
                {fail}
            }}
        }}""".format(parts=', '.join(inputs[:n_parts]), shifts=', '.join(map(str, self.shifts)),
                     weights=', '.join(map(c_float, self.weights)), n_parts=n_parts,
                     bias=inputs[n_parts] if self.bias_ndim else 'NULL',
                     act=ACTIVATIONS.index(self.activation), y=outputs[0], fail=sub['fail'])


class UpsampleSumGrad(MultiscaleOp):
    """From y = f(pre) (absent without activation) and g = dcost/dy (n, C, H, W): for every
    part k the sums of weights[k] g f'(pre) over 2^shifts[k] x 2^shifts[k] blocks, then the
    bias gradient: for bias_ndim 1 the sum of g f'(pre) over (n, H, W) (row sums float32, the
    rest float64), for 3 its sum over n (float64), (C, H, W)."""
    __props__ = ('shifts', 'weights', 'activation', 'bias_ndim')

    def __init__(self, shifts, weights, activation=None, bias_ndim=0, openmp=None):
        super().__init__(openmp=openmp)
        self.shifts, self.weights = tuple(shifts), tuple(weights)
        self.activation, self.bias_ndim = activation, bias_ndim

    def make_node(self, *inputs):
        inputs = [as_float32(v, 4, 'upsample_sum gradient', 'input {}'.format(k)) for k, v in enumerate(inputs)]
        if len(inputs) != 1 + bool(self.activation):
            raise TypeError('upsample_sum gradient: expected {} inputs, got {}'.format(
                1 + bool(self.activation), len(inputs)))
        bcast = inputs[-1].broadcastable[:2] + (False, False)
        outputs = [T.TensorType('float32', bcast)() for _ in self.shifts]
        if self.bias_ndim:
            outputs.append(T.TensorType('float32', (False,) * self.bias_ndim)())
        return gof.Apply(self, inputs, outputs)

    def infer_shape(self, node, shapes):
        n, C, H, W = shapes[-1]
        bias = {0: [], 1: [(C,)], 3: [(C, H, W)]}[self.bias_ndim]
        return [(n, C, H // 2 ** s, W // 2 ** s) for s in self.shifts] + bias

    def L_op(self, inputs, outputs, output_grads):
        return [grad_not_implemented(self, k, v) for k, v in enumerate(inputs)]

    def c_code(self, node, name, inputs, outputs, sub):
        n_parts = len(self.shifts)
        return """
        {{
            static const int shifts[] = {{{shifts}}};
            static const float weights[] = {{{weights}}};
            PyArrayObject **grads[] = {{{grads}}};
            if (ms_upsample_sum_grad({y}, {g}, {n_parts}, shifts, weights, {act}, grads, {dbias}, {untied})) {{
                {fail}
            }}
        }}""".format(shifts=', '.join(map(str, self.shifts)), weights=', '.join(map(c_float, self.weights)),
                     grads=', '.join('&' + o for o in outputs[:n_parts]),
                     y=inputs[0] if self.activation else 'NULL', g=inputs[-1], n_parts=n_parts,
                     act=ACTIVATIONS.index(self.activation),
                     dbias='&' + outputs[n_parts] if self.bias_ndim else 'NULL',
                     untied=int(self.bias_ndim == 3), fail=sub['fail'])


class BiasActivation(MultiscaleOp):
    """y = f(x + b[None, :]) for x (N, F), b (F,). Gradient: BiasActivationGrad."""
    __props__ = ('activation',)

    def __init__(self, activation, openmp=None):
        check_activation(activation, 'bias_activation')
        super().__init__(openmp=openmp)
        self.activation = activation

    def make_node(self, x, b):
        x = as_float32(x, 2, 'bias_activation', 'x')
        b = as_float32(b, 1, 'bias_activation', 'b')
        return gof.Apply(self, [x, b], [T.TensorType('float32', (x.broadcastable[0], False))()])

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, output_grads):
        dx, db = BiasActivationGrad(self.activation)(outputs[0], output_grads[0])
        return [like(dx, inputs[0]), like(db, inputs[1])]

    def c_code(self, node, name, inputs, outputs, sub):
        return """
        if (ms_bias_activation({x}, {b}, {act}, &{y})) {{
            {fail}
        }}""".format(x=inputs[0], b=inputs[1], act=ACTIVATIONS.index(self.activation), y=outputs[0],
                     fail=sub['fail'])


class BiasActivationGrad(MultiscaleOp):
    """From y = f(x + b) (N, F) and g = dcost/dy: dx = g f'(x + b) and db (F,) its sums over
    N (float64 partial sums over fixed blocks of rows: the same for any thread count)."""
    __props__ = ('activation',)

    def __init__(self, activation, openmp=None):
        super().__init__(openmp=openmp)
        self.activation = activation

    def make_node(self, y, g):
        y = as_float32(y, 2, 'bias_activation gradient', 'y')
        g = as_float32(g, 2, 'bias_activation gradient', 'the output gradient')
        return gof.Apply(self, [y, g], [T.TensorType('float32', (False, False))(),
                                        T.TensorType('float32', (False,))()])

    def infer_shape(self, node, shapes):
        N, F = shapes[0]
        return [(N, F), (F,)]

    def L_op(self, inputs, outputs, output_grads):
        return [grad_not_implemented(self, k, v) for k, v in enumerate(inputs)]

    def c_code(self, node, name, inputs, outputs, sub):
        return """
        if (ms_bias_activation_grad({y}, {g}, {act}, &{dx}, &{db})) {{
            {fail}
        }}""".format(y=inputs[0], g=inputs[1], act=ACTIVATIONS.index(self.activation), dx=outputs[0],
                     db=outputs[1], fail=sub['fail'])


# ---------------------------------------------------------------- the functions to call

def mean_pool_pyramid(x, n_scales):
    """[x, pool_2(x), pool_4(x), ..., pool_{2^(n_scales - 1)}(x)] for x (n, C, H, W) with H
    and W divisible by 2^(n_scales - 1); pool_k = tests/reference_ops.mean_pool(x, k)."""
    x = as_float32(x, 4, 'mean_pool_pyramid', 'x')
    if not 1 <= n_scales <= MAX_PARTS:
        raise ValueError('mean_pool_pyramid: n_scales must be 1 to {}, not {}'.format(MAX_PARTS, n_scales))
    if n_scales == 1:
        return [x]
    return [x] + MeanPoolPyramid(n_scales).make_node(x).outputs


def upsample_sum(parts, bias=None, activation=None, factor=1.0):
    """f(factor sum_s up_{2^s}(parts[s]) + bias): parts[s] (n, C, H / 2^s, W / 2^s), up_k
    = tests/reference_ops.upsample_nearest(., k), bias None, (C,) added per channel or (C, H, W)
    added per channel and pixel (untied), f one of None, 'softplus', 'tanh', 'leaky_relu'
    (slope 0.05).

    'after_sum' (paper): upsample_sum(conv outputs, bias=sum of the scales' biases,
    activation=f); 'per_scale' (released code): upsample_sum(f(conv outputs), factor=1 /
    n_scales)."""
    n = len(parts)
    bias = [] if bias is None else [T.as_tensor_variable(bias)]
    op = UpsampleSum(tuple(range(n)), (factor,) * n, activation, bias[0].ndim if bias else 0)
    return op(*(list(parts) + bias))


def bias_activation(x, b, activation):
    """f(x + b[None, :]) for x (N, F), b (F,); f 'tanh', 'softplus' or 'leaky_relu'."""
    return BiasActivation(activation)(x, b)
