"""Reverse-process networks (paper Appendix D) and the layers they are made of.

A network maps x^t to read-out coefficients; model.py turns those into the mean
and variance of p(x^{t-1} | x^t). Every parameter is a named Theano shared
variable with an explicit initialisation.
"""
import backend  # first: it configures Theano before Theano is imported

import numpy as np
import theano
import theano.tensor as T

import conv3x3
import multiscale
import util

floatX = theano.config.floatX


# ---------------------------------------------------------------- initialisation

def gaussian_init(rng, shape, std):
    """Isotropic Gaussian weights N(0, std^2)."""
    return rng.normal(0.0, std, size=shape)


def orthogonal_init(rng, shape):
    """A (rows x cols) matrix with orthonormal rows or columns (QR of a Gaussian)."""
    rows, cols = shape
    q, r = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


def constant_init(shape, value=0.0):
    return np.full(shape, value)


# ---------------------------------------------------------------- the temporal basis (Appendix D.2.1)

def temporal_basis(T_steps, J, width, warp=None):
    """g_j(t), (J, T): Gaussian bumps with centres evenly spaced over t = 1..T,
    normalised to sum to 1 at every t (Appendix D.2.1).

    width='paper': std = spacing of the centres; 'code': half the spacing (released code).
    warp: optional increasing values u(t), (T,); the bumps are then evenly spaced in u
    instead of t (our option, for kernels that change fastest near the ends).
    """
    u = np.arange(1, T_steps + 1.0) if warp is None else np.asarray(warp, dtype=float)
    centres = np.linspace(u[0], u[-1], J)
    spacing = (u[-1] - u[0]) / (J - 1)
    std = spacing if width == 'paper' else spacing / 2
    g = np.exp(-(u[None, :] - centres[:, None]) ** 2 / (2 * std ** 2))
    g[g < 1e-20] = 0  # far tails: float32 denormals there make every product with g ~10x slower
    return (g / g.sum(axis=0, keepdims=True)).astype(floatX)


def noise_logit(T_steps):
    """u(t) = logit(t / (T + 1)): about the log-odds of a bit having been resampled by
    step t under the binomial schedule, where 1 - A_t = t / T; t / (T + 1) instead of t / T
    keeps u finite at t = T (where t / T = 1). A time axis on which the reverse kernel
    changes at an even pace (our choice of warp for the heartbeat's read-out basis)."""
    t = np.arange(1, T_steps + 1.0)
    return util.logit(t / (T_steps + 1))


# ---------------------------------------------------------------- layers

class Layer:
    """Something with named parameters; `params` lists them, sub-layers included."""

    def __init__(self, name):
        self.name = name
        self.params = []

    def param(self, key, value):
        p = theano.shared(np.asarray(value, dtype=floatX), name='{}.{}'.format(self.name, key))
        self.params.append(p)
        return p

    def add(self, layer):
        self.params.extend(layer.params)
        return layer


class Dense(Layer):
    """x W + b; W orthogonal times `gain` (the released code's choice, gain 1) or
    Gaussian with `std`."""

    def __init__(self, name, n_in, n_out, rng, std=None, gain=1.0):
        super().__init__(name)
        w = gain * orthogonal_init(rng, (n_in, n_out)) if std is None else gaussian_init(rng, (n_in, n_out), std)
        self.W = self.param('W', w)
        self.b = self.param('b', constant_init(n_out))

    def __call__(self, x):
        return T.dot(x, self.W) + self.b

    def activated(self, x, activation):
        """f(x W + b) for an activation of multiscale.py, the bias and f in one C pass."""
        return multiscale.bias_activation(T.dot(x, self.W), self.b, activation)


class PerStepDense(Layer):
    """A separate affine read-out for every time step t (Appendix D.1): x W_t + b_t.

    Computed as one matrix product for all steps, then the row of each example's
    step picked by a one-hot mask: BLAS work instead of a per-example gather, about
    3x faster for the Swiss roll's read-out here.
    """

    def __init__(self, name, n_steps, n_in, n_out, rng, std):
        super().__init__(name)
        self.n_steps, self.n_out = n_steps, n_out
        self.W = self.param('W', gaussian_init(rng, (n_in, n_steps * n_out), std))
        self.b = self.param('b', constant_init((n_steps, n_out)))

    def __call__(self, x, t_index):
        """x: (n, n_in); t_index: (n,) int, 0-based step."""
        y = T.dot(x, self.W).reshape((x.shape[0], self.n_steps, self.n_out))
        pick = T.extra_ops.to_one_hot(t_index, self.n_steps, dtype=floatX)
        return (y * pick[:, :, None]).sum(axis=1) + self.b[t_index]


class BasisDense(Layer):
    """An affine read-out whose weights vary smoothly in t: sum_j g_j(t) (x W_j + b_j),
    with the temporal basis g (J, T) of Appendix D.2.1."""

    def __init__(self, name, basis, n_in, n_out, rng, std):
        super().__init__(name)
        self.g = basis.T  # (T, J)
        J = basis.shape[0]
        self.n_out = n_out
        self.W = self.param('W', gaussian_init(rng, (n_in, J * n_out), std))
        self.b = self.param('b', constant_init(J * n_out))

    def __call__(self, x, t_index):
        y = (T.dot(x, self.W) + self.b).reshape((x.shape[0], -1, self.n_out))  # (n, J, out)
        return (y * T.constant(self.g)[t_index][:, :, None]).sum(axis=1)


# ---------------------------------------------------------------- toy networks (Appendix D.1)

class SwissRollRBF(Layer):
    """Normalised radial-basis-function network (Appendix D.1.1).

    One hidden layer of `n_hidden` Gaussian units shared over time (the paper's 16 by
    default; the Swiss roll preset uses 64, our choice: presets.OUR_CHOICES),
    h_k = exp(-|x - c_k|^2 / (2 w_k^2)) / sum_l exp(...), and a separate affine
    read-out per time step to (z_mu, z_Sigma), 2 values each for 2-D data.
    expert: what each unit contributes to the read-out. 'constant' (the paper): h_k;
    'linear' or 'quadratic' (our addition): h_k times the monomials of x up to that
    degree, so each unit holds a local polynomial map, which lets the mean follow a
    thin roll closely.
    Centres start at training points, widths at the mean nearest-centre distance.
    """

    DEGREE = {'constant': 0, 'linear': 1, 'quadratic': 2}

    def __init__(self, T_steps, rng, init_points, n_hidden=16, expert='quadratic'):
        super().__init__('rbf')
        centres = init_points[rng.choice(len(init_points), n_hidden, replace=False)]
        d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.eye(n_hidden) * 1e9
        self.centres = self.param('centres', centres)
        self.log_width = self.param('log_width', constant_init(n_hidden, np.log(d.min(1).mean())))
        self.degree = self.DEGREE[expert]
        n_monomials = (1, 3, 6)[self.degree]  # 2-D: 1; 1, x, y; 1, x, y, x^2, xy, y^2
        self.readout = self.add(PerStepDense('rbf.readout', T_steps, n_hidden * n_monomials, 4, rng, 0.01))

    def hidden(self, x):
        """h (n, K): normalised Gaussian responses."""
        d2 = T.sqr(x[:, None, :] - self.centres[None, :, :]).sum(axis=2)
        h = T.nnet.softmax(-d2 / (2 * T.exp(2 * self.log_width)))
        return h * T.gt(h, 1e-20)  # flush tiny values: denormals make BLAS 10x slower

    def monomials(self, x):
        """(n, M): 1, then x and y, then x^2, xy, y^2, up to the expert's degree."""
        ones = T.ones_like(x[:, :1])
        terms = [ones, x, (x[:, [0, 0, 1]] * x[:, [0, 1, 1]])][:self.degree + 1]
        return T.concatenate(terms, axis=1)

    def __call__(self, xt, t):
        h = self.hidden(xt)
        features = (h[:, :, None] * self.monomials(xt)[:, None, :]).flatten(2)
        z = self.readout(features, t - 1)
        return z[:, :2], z[:, 2:]


class HeartbeatMLP(Layer):
    """Sigmoid MLP for the binary heartbeat (Appendix D.1.2): 20 inputs, 3 hidden layers
    of 50 shared over time (the paper's size, this class's default; the heartbeat preset
    uses 100, our choice: presets.OUR_CHOICES), and a read-out to one logit per bit.

    basis=None: a separate read-out per time step (the paper). With a temporal basis
    (J, T) the read-out weights are sum_j g_j(t) W_j instead (our option): each W_j
    learns from every nearby step, which trains far faster at T = 2000.
    Hidden weights: orthogonal times init_gain. The paper gives no initialisation; a
    sigmoid's slope at 0 is 1/4, so gain 4 keeps gradients from shrinking 4x per layer
    (Glorot & Bengio 2010). With gain 1 the same training ended 0.28 bits/seq lower
    (-2.84 against -2.56; lr 1e-3, 20,000 minibatches, 50 units).
    """

    def __init__(self, T_steps, rng, n_dims=20, n_hidden=50, n_layers=3, basis=None, init_gain=4.0):
        super().__init__('mlp')
        sizes = [n_dims] + [n_hidden] * n_layers
        self.layers = [self.add(Dense('mlp.hidden{}'.format(i), a, b, rng, gain=init_gain))
                       for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
        self.readout = self.add(
            PerStepDense('mlp.readout', T_steps, n_hidden, n_dims, rng, 0.01) if basis is None
            else BasisDense('mlp.readout', basis, n_hidden, n_dims, rng, 0.01))

    def __call__(self, xt, t):
        h = xt
        for layer in self.layers:
            h = T.nnet.sigmoid(layer(h))
        return self.readout(h, t - 1)


# ---------------------------------------------------------------- image networks (Appendix D.2.1)
#
# Layer counts follow the released code: every n_layers_* counts all affine layers of
# its path, its last one included. The dense-lower path is n_in -> n_hidden_dense_lower
# x (depth - 1) -> n_hidden_dense_lower_output x H x W (nonlinear throughout); the upper
# path is n_layers_dense_upper - 1 per-pixel layers of n_hidden_dense_upper and then the
# linear read-out to 2J values per channel. With this counting and the untied
# convolution biases of 2015's Blocks, the released code's MNIST defaults have 1,762,928
# parameters and its CIFAR-10 configuration 13,385,280 (1,691,008 and 12,692,280 with one
# bias per filter; docs/paper_and_code.md, section 4); an extra output layer on the dense
# path would give 0.25M more for MNIST.

# nonlinearity='paper': softplus in the convolutional layers, tanh in the dense and
# per-pixel layers (Appendix D.2.1); 'code': leaky ReLU of slope 0.05 everywhere (released
# code). Computed by the fast ops of multiscale.py.
NONLINEARITIES = {'paper': {'conv': 'softplus', 'dense': 'tanh'},
                  'code': {'conv': 'leaky_relu', 'dense': 'leaky_relu'}}


# The reference formulas of the multi-scale layer, which multiscale.py computes in C (and
# is tested against): the released code's leaky ReLU, mean pooling, nearest upsampling.

def leaky_relu(x, slope=conv3x3.LEAKY_RELU_SLOPE):
    """The released code's nonlinearity: x above zero, slope * x below."""
    return T.nnet.relu(x, alpha=slope)


# conv_impl='auto': Winograd for layers with at least this many input channels, at every
# scale (conv3x3's cache-sized blocks win from 8 channels and down to the 4x4 scale, on one
# thread and on two), CorrMM below (it wins at 1, 3 and 4; docs/performance.md)
WINOGRAD_MIN_CHANNELS = 8


def auto_conv_impls(n_in, n_scales):
    """conv_impl='auto' resolved per scale for a layer of n_in input channels."""
    return ['winograd' if n_in >= WINOGRAD_MIN_CHANNELS else 'corrmm'] * n_scales


class MultiScaleConv(Layer):
    """One multi-scale convolution layer (Appendix D.2.1): at scales s = 0..n_scales-1 the
    input is mean-pooled by 2^s, convolved 3x3 ('same', its own filters and biases per
    scale), and upsampled back to full size by repetition; the scales are summed.

    placement='after_sum' (paper): f(sum_s up_s(conv_s(pool_s(x)) + b_s)).
    placement='per_scale' (code): (1 / n_scales) sum_s up_s(f(conv_s(pool_s(x)) + b_s)).
    f: an activation of multiscale.py ('softplus', 'leaky_relu'). Weights
    N(0, (sqrt(1 / n_filters) / filter_size^2)^2) with n_filters the number of output
    channels, biases 0 (released code). The convolution is a cross-correlation (what
    CorrMM computes with filter_flip=False); conv_impl: 'corrmm' (Theano's), 'winograd' or
    'im2col' (conv3x3.py), or 'auto' (WINOGRAD_MIN_CHANNELS: the faster of the two on this
    project's layers, docs/performance.md).
    tied_biases=True: one bias per filter, b_s (n_filters,). False (the released code, whose
    Blocks convolutions of 2015 defaulted to untied biases): one per filter and position of
    the 'full' convolution's output at that scale, b_s (n_filters, h_s + 2 pad, w_s + 2 pad)
    with (h_s, w_s) = image_size / 2^s and pad = (filter_size - 1) / 2; the released code
    crops that output to its central h_s x w_s, so the biases of the outer ring are parameters
    that never reach the output (their gradient is zero and they stay 0). Untied biases fix
    the image size: image_size (H, W) is then required.
    The pooling, upsampling, sums, biases and f run in the C passes of multiscale.py.
    """

    def __init__(self, name, n_in, n_filters, n_scales, rng, f, placement, filter_size=3, conv_impl='corrmm',
                 tied_biases=True, image_size=None):
        super().__init__(name)
        if placement not in ('after_sum', 'per_scale'):
            raise ValueError('placement must be after_sum or per_scale, not {!r}'.format(placement))
        if not tied_biases and image_size is None:
            raise ValueError('untied biases need the image size')
        if conv_impl not in ('auto', 'corrmm') and filter_size != 3:
            raise ValueError('conv_impl={!r} computes 3x3 filters only; use corrmm'.format(conv_impl))
        if conv_impl == 'auto':
            self.conv_impls = (auto_conv_impls(n_in, n_scales) if filter_size == 3
                               else ['corrmm'] * n_scales)
        else:
            self.conv_impls = [conv_impl] * n_scales
        std = np.sqrt(1.0 / n_filters) / filter_size ** 2
        shape = (n_filters, n_in, filter_size, filter_size)
        self.pad = (filter_size - 1) // 2
        self.W = [self.param('W{}'.format(s), gaussian_init(rng, shape, std)) for s in range(n_scales)]
        self.b = [self.param('b{}'.format(s), constant_init(
            n_filters if tied_biases else
            (n_filters, image_size[0] // 2 ** s + 2 * self.pad, image_size[1] // 2 ** s + 2 * self.pad)))
            for s in range(n_scales)]
        self.f, self.placement, self.tied_biases = f, placement, tied_biases

    def bias(self, s):
        """The bias of scale s as it is added: (n_filters,), or untied the part of b_s at the
        positions of the 'same' output, (n_filters, h_s, w_s)."""
        if self.tied_biases or not self.pad:
            return self.b[s]
        return self.b[s][:, self.pad:-self.pad, self.pad:-self.pad]

    def conv(self, x, s, bias=None, activation=None):
        """f(W_s * x + bias), the cross-correlation of scale s by its conv_impl; bias and f
        optional. conv3x3's ops add a bias per channel and apply f in their output pass; after
        CorrMM, or with an untied bias, a C pass of multiscale.py does."""
        impl = self.conv_impls[s]
        if impl == 'corrmm':
            y = T.nnet.conv2d(x, self.W[s], border_mode='half', filter_flip=False)
        elif bias is None or bias.ndim == 1:
            return conv3x3.conv3x3(x, self.W[s], bias, activation, impl=impl)
        else:
            y = conv3x3.conv3x3(x, self.W[s], impl=impl)
        return y if bias is None and activation is None else multiscale.upsample_sum([y], bias, activation)

    def summed_bias(self):
        """sum_s up_s(b_s) for 'after_sum': a constant per channel is the same upsampled, so
        tied biases simply add up; untied ones are upsampled and summed by a C pass."""
        if self.tied_biases:
            return sum(self.b)
        maps = [self.bias(s).dimshuffle('x', 0, 1, 2) for s in range(len(self.b))]  # (1, F, h_s, w_s)
        return maps[0][0] if len(maps) == 1 else multiscale.upsample_sum(maps)[0]

    def __call__(self, x):
        n_scales = len(self.W)
        levels = multiscale.mean_pool_pyramid(x, n_scales)
        if self.placement == 'after_sum':
            return multiscale.upsample_sum([self.conv(v, s) for s, v in enumerate(levels)],
                                           bias=self.summed_bias(), activation=self.f)
        parts = [self.conv(v, s, self.bias(s), self.f) for s, v in enumerate(levels)]
        return parts[0] if n_scales == 1 else multiscale.upsample_sum(parts, factor=1.0 / n_scales)


class ImageNetwork(Layer):
    """The reverse-process network for images (Appendix D.2.1; released code regression.py).

    x^t (n, C, H, W) -> per-pixel features h = hidden(x^t); the read-out gives from them
    y (n, C, H, W, 2, J), y[..., 0, j] = y^mu_j, y[..., 1, j] = y^Sigma_j, which
    TemporalReadout reads at each example's step without forming it.
    Lower paths, in parallel: n_layers_conv multi-scale convolution layers of n_hidden_conv
    channels (conv_path=False: the paper's dense-only MNIST network), and a dense path on
    the flattened image whose last layer gives n_hidden_dense_lower_output channels per
    pixel (dense_path=False: the paper's dead-leaves and bark networks, Figure D.1, which
    are then fully convolutional and take images of any size whose sides are divisible by
    2^(n_scales - 1)). Upper path: per-pixel layers on the channels of both paths, then
    the linear read-out. dense_depth_from_conv=True: the dense path is n_layers_conv deep,
    not n_layers_dense_lower (released code quirk). Dense weights orthogonal, biases 0.
    tied_biases=False: the convolutions' biases are untied, one per filter and position
    (MultiScaleConv; released code), which fixes the image size. feature_scaling=True: where
    both lower paths are present, the per-pixel layers take each path's channels divided by
    the square root of its channel count (released code; it scales only where it
    concatenates the two paths). The defaults of these two keys build the networks of
    checkpoints made before they existed.
    """

    def __init__(self, image_shape, rng, n_temporal_basis=10, n_hidden_dense_lower=500,
                 n_hidden_dense_lower_output=2, n_hidden_dense_upper=20, n_hidden_conv=20,
                 n_layers_conv=4, n_layers_dense_lower=4, n_layers_dense_upper=2, n_scales=1,
                 conv_path=True, dense_path=True, nonlinearity='code', scale_nonlinearity='per_scale',
                 dense_depth_from_conv=True, conv_impl='auto', tied_biases=True, feature_scaling=False):
        super().__init__('image_net')
        C, H, W = image_shape
        if H % 2 ** (n_scales - 1) or W % 2 ** (n_scales - 1):
            raise ValueError('{}x{} images cannot be mean-pooled to {} scales (need sides '
                             'divisible by {})'.format(H, W, n_scales, 2 ** (n_scales - 1)))
        if not (conv_path or dense_path):
            raise ValueError('the image network needs conv_path or dense_path')
        f = NONLINEARITIES[nonlinearity]
        self.f_dense, self.C, self.J = f['dense'], C, n_temporal_basis
        self.conv, self.dense_lower, n_features = [], [], []
        if conv_path:
            sizes = [C] + [n_hidden_conv] * n_layers_conv
            self.conv = [self.add(MultiScaleConv('conv{}'.format(i), a, b, n_scales, rng, f['conv'],
                                                 scale_nonlinearity, conv_impl=conv_impl,
                                                 tied_biases=tied_biases, image_size=(H, W)))
                         for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
            n_features.append(n_hidden_conv)
        if dense_path:
            depth = n_layers_conv if dense_depth_from_conv else n_layers_dense_lower
            sizes = [C * H * W] + [n_hidden_dense_lower] * (depth - 1) + [n_hidden_dense_lower_output * H * W]
            self.dense_lower = [self.add(Dense('dense_lower{}'.format(i), a, b, rng))
                                for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
            self.dense_shape = (n_hidden_dense_lower_output, H, W)
            n_features.append(n_hidden_dense_lower_output)
        self.n_features = n_features
        # released code: Y / sqrt(n_hidden_conv) and Y_dense / sqrt(n_hidden_dense_lower_output)
        both = feature_scaling and len(n_features) == 2
        self.feature_scales = [1 / np.sqrt(F) if both else 1.0 for F in n_features]
        sizes = [sum(n_features)] + [n_hidden_dense_upper] * (n_layers_dense_upper - 1)
        self.dense_upper = [self.add(Dense('dense_upper{}'.format(i), a, b, rng))
                            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
        self.readout = self.add(Dense('readout', sizes[-1], C * 2 * n_temporal_basis, rng))

    def lower_paths(self, x):
        """The channels of each lower path, [(n, F_k, H, W)]: convolutional, then dense."""
        parts = []
        if self.conv:
            c = x
            for layer in self.conv:
                c = layer(c)
            parts.append(c)
        if self.dense_lower:
            h = x.flatten(2)
            for layer in self.dense_lower:
                h = layer.activated(h, self.f_dense)
            parts.append(h.reshape((x.shape[0],) + self.dense_shape))
        return parts

    def hidden(self, xt):
        """The last per-pixel features before the read-out, (n, H W, F). The first per-pixel
        layer takes each lower path with its own rows of its weight matrix: the layer on the
        concatenated channels without copying them into one array. A path's feature scale
        multiplies its rows of the weights, which is the same as scaling its channels."""
        parts = self.lower_paths(xt)
        pixels = [p.dimshuffle(0, 2, 3, 1).reshape((-1, p.shape[1])) for p in parts]  # (n H W, F_k)
        scales = [np.float32(c) for c in self.feature_scales]
        if not self.dense_upper:  # the read-out takes the lower paths' channels directly
            pixels = [v if c == 1 else v * c for v, c in zip(pixels, scales)]
            h = T.concatenate(pixels, axis=1) if len(pixels) > 1 else pixels[0]
        else:
            first = self.dense_upper[0]
            rows = np.cumsum([0] + self.n_features)
            weights = [first.W[a:b] if c == 1 else first.W[a:b] * c for a, b, c in zip(rows[:-1], rows[1:], scales)]
            h = multiscale.bias_activation(sum(T.dot(v, w) for v, w in zip(pixels, weights)), first.b, self.f_dense)
            for layer in self.dense_upper[1:]:
                h = layer.activated(h, self.f_dense)
        return h.reshape((xt.shape[0], -1, h.shape[1]))


# ---------------------------------------------------------------- the temporal read-out (Appendix D.2.1)

class TemporalReadout:
    """net(xt, t) -> (z_mu, z_Sigma) for GaussianDiffusion from an ImageNetwork whose
    read-out gives y (n, C, H, W, 2, J), read at each example's step: z = sum_j y_j g_j(t).
    As y_j = h W_j + b_j is linear in the last per-pixel features h,
    z = h (sum_j g_j(t) W_j) + sum_j g_j(t) b_j: one (F x 2C) matrix per example, so y
    itself, J times larger than z, is never formed."""

    def __init__(self, net, basis):
        self.net, self.basis = net, basis  # basis g_j(t): (J, T)
        self.params = net.params

    def __call__(self, xt, t):
        n, H, W = xt.shape[0], xt.shape[2], xt.shape[3]
        g_t = T.constant(self.basis)[:, t - 1].T  # (n, J)
        C, J, readout = self.net.C, self.net.J, self.net.readout
        w = readout.W.reshape((readout.W.shape[0], 2 * C, J))  # columns ordered (c, mu/Sigma, j)
        m = (w.dimshuffle('x', 0, 1, 2) * g_t.dimshuffle(0, 'x', 'x', 1)).sum(axis=3)  # (n, F, 2C)
        b = T.dot(g_t, readout.b.reshape((2 * C, J)).T)  # (n, 2C)
        z = T.batched_dot(self.net.hidden(xt), m) + b.dimshuffle(0, 'x', 1)  # (n, H W, 2C)
        z = z.reshape((n, H, W, C, 2)).dimshuffle(0, 3, 1, 2, 4)  # (n, C, H, W, 2)
        return z[:, :, :, :, 0], z[:, :, :, :, 1]
