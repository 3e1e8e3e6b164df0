"""One experiment per data set: its data, its model and the defaults the released
code or the paper gives it. train.py, evaluate.py and sampler.py build models
here from a configuration (the one stored in every checkpoint).
"""
import util  # noqa: F401  (configures Theano before it is imported)

import os

import numpy as np
import theano
import theano.tensor as T

import datasets
import model as M
import regression as R

floatX = theano.config.floatX
L_NULL_BITS_PER_DIM = -0.5 * np.log2(2 * np.pi * np.e)  # N(0, 1) on unit-variance data

# Paper-vs-code choices of the Gaussian model (SPEC section 9). Each is a --model-args key.
PRESETS = {
    'paper': dict(learn_beta=True, code_mu=False, code_sigma=False, kl_factor='T-1',
                  basis_width='paper', t_per_minibatch=False,
                  nonlinearity='paper', scale_nonlinearity='after_sum', conv_path=True,
                  dense_depth_from_conv=False, dequantisation='paper', norm_from_minibatch=False,
                  skip_last_step=False),
    'code': dict(learn_beta=False, code_mu=True, code_sigma=True, kl_factor='T',
                 basis_width='code', t_per_minibatch=True, beta_init='harmonic',
                 nonlinearity='code', scale_nonlinearity='per_scale', conv_path=True,
                 dense_depth_from_conv=True, dequantisation='code', norm_from_minibatch=True,
                 skip_last_step=True),  # the released sampler stops at x^1
}
# Preset keys that only the image sets have (SPEC section 9, items 4-6 and 10).
IMAGE_PRESET_KEYS = ('nonlinearity', 'scale_nonlinearity', 'conv_path', 'dense_depth_from_conv',
                     'dequantisation', 'norm_from_minibatch')
# A preset's value that differs by data set: the paper's MNIST network was dense-only
# (Appendix D.2.1).
DATASET_PRESETS = {('MNIST', 'paper'): dict(conv_path=False),
                   # Eq. 65 asks the network for z = x + (drift) / Sigma, which grows like
                   # 1 / b_t; with the roll's b_1 = 1e-6 that stalls training, so the Swiss
                   # roll reads out the mean in the code's form in both presets.
                   ('swissroll', 'paper'): dict(code_mu=True)}

# Model arguments of each data set (keys of --model-args) and training defaults for
# this 2-core machine (batch_size, lr, max_batches, ext_every_n).
MODEL_ARGS = {
    'swissroll': dict(T=40, n_hidden=64, expert='quadratic', n_basis=10, beta_init='logit', beta_1=1e-7,
                      beta_min=1e-7,
                      noise=datasets.SWISSROLL_NOISE, n_train=200000, n_eval=20000),
    'heartbeat': dict(T=2000, n_hidden=100, n_layers=3, readout='basis', n_basis=20,
                      basis_warp='logit', init_gain=4.0, p=0.2, n_train=100000, n_eval=20000,
                      n_final_eval=1000),
}
# Images: the released code's network defaults (its MNIST run) under its own names, T and
# the temporal basis; b_1 = 1e-3 is our choice for the learned schedule of the paper
# preset (the harmonic base's own b_1 at T = 1000; the code's fixed one is 2e-3).
IMAGE_DEFAULTS = dict(T=1000, n_temporal_basis=10, beta_init='harmonic', beta_1=1e-3,
                      n_hidden_dense_lower=500, n_hidden_dense_lower_output=2,
                      n_hidden_dense_upper=20, n_hidden_conv=20, n_layers_conv=4,
                      n_layers_dense_lower=4, n_layers_dense_upper=2, n_scales=1)
MODEL_ARGS.update({
    'MNIST': dict(IMAGE_DEFAULTS),
    # the CIFAR-10 configuration of the released code's README (about 12.7M parameters)
    'CIFAR10': dict(IMAGE_DEFAULTS, n_hidden_dense_lower=1000, n_hidden_dense_lower_output=5,
                    n_hidden_conv=100, n_layers_conv=6, n_layers_dense_lower=6,
                    n_layers_dense_upper=4, n_hidden_dense_upper=100),
    # 64x64 patches (datasets.bark); the paper's T = 500. folder: the UIUC textures, or
    # None for scikit-image's. The dense path alone has 6.6M parameters at this size.
    'bark': dict(IMAGE_DEFAULTS, T=500, folder=None, patch=64),
    # 16x16 dead leaves (not the 64x64 default of datasets.py) so that the code's network
    # (0.9M parameters at this size) trains on two CPU cores at a few steps per second.
    'deadleaves': dict(IMAGE_DEFAULTS, image_size=16),
    # 8x8 digits: the code's network is already small here (0.4M parameters).
    'digits': dict(IMAGE_DEFAULTS),
})
RUN_DEFAULTS = {
    'swissroll': dict(batch_size=512, lr=3e-3, lr_final=1e-5, max_batches=60000, ext_every_n=2000),
    'heartbeat': dict(batch_size=512, lr=3e-3, lr_final=1e-4, max_batches=40000, ext_every_n=4000),
    'MNIST': dict(batch_size=512, lr=1e-3, lr_final=None, max_batches=100000, ext_every_n=1000),
    'CIFAR10': dict(batch_size=200, lr=1e-3, lr_final=None, max_batches=100000, ext_every_n=1000),
    'bark': dict(batch_size=128, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=500),
    'deadleaves': dict(batch_size=100, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=50),
    'digits': dict(batch_size=100, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=500),
}
# Model keys added after runs had been made, with the value that reproduces those runs:
# a checkpoint without the key loads as it was trained.
ADDED_KEYS = {'swissroll': {'beta_min': M.BETA_MIN}, 'heartbeat': {'init_gain': 1.0}}
IMAGES = ('MNIST', 'CIFAR10', 'deadleaves', 'bark', 'digits')
GAUSSIAN = ('swissroll',) + IMAGES


# ---------------------------------------------------------------- what each --model-args key accepts

class Int:
    """An integer in [lo, hi]."""

    def __init__(self, lo, hi=None):
        self.lo, self.hi = lo, hi

    def accepts(self, v):
        return (isinstance(v, int) and not isinstance(v, bool) and v >= self.lo
                and (self.hi is None or v <= self.hi))

    def __str__(self):
        return 'an integer >= {}'.format(self.lo) if self.hi is None else \
            'an integer in [{}, {}]'.format(self.lo, self.hi)


class Real:
    """A finite number in the open interval (lo, hi), or [lo, hi) with closed_lo."""

    def __init__(self, lo, hi=np.inf, closed_lo=False):
        self.lo, self.hi, self.closed_lo = lo, hi, closed_lo

    def accepts(self, v):
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                and (v >= self.lo if self.closed_lo else v > self.lo) and v < self.hi)

    def __str__(self):
        if self.hi == np.inf:
            return 'a number {} {}'.format('>=' if self.closed_lo else '>', self.lo)
        return 'a number in {}{}, {})'.format('[' if self.closed_lo else '(', self.lo, self.hi)


class OneOf:
    def __init__(self, *choices, none=False):
        self.choices, self.none = choices, none

    def accepts(self, v):
        return (v is None and self.none) or any(v == c and type(v) is type(c) for c in self.choices)

    def __str__(self):
        return 'one of ' + ', '.join(repr(c) for c in self.choices + ((None,) if self.none else ()))


class Folder:
    def accepts(self, v):
        return v is None or (isinstance(v, str) and os.path.isdir(v))

    def __str__(self):
        return 'an existing folder or None'


class OptionalInt(Int):
    def accepts(self, v):
        return v is None or super().accepts(v)

    def __str__(self):
        return super().__str__() + ' or None'


BOOL = OneOf(True, False)
ARG_RULES = {
    # the diffusion and its schedule
    'T': Int(2), 'beta_init': OneOf('harmonic', 'geometric', 'logit'), 'beta_1': Real(0, 1),
    'beta_min': Real(0, 1, closed_lo=True), 'p': Real(0, 1),
    # presets (SPEC section 9)
    'learn_beta': BOOL, 'code_mu': BOOL, 'code_sigma': BOOL, 'kl_factor': OneOf('T-1', 'T'),
    'basis_width': OneOf('paper', 'code'), 't_per_minibatch': BOOL, 'nonlinearity': OneOf('paper', 'code'),
    'scale_nonlinearity': OneOf('after_sum', 'per_scale'), 'conv_path': BOOL, 'dense_depth_from_conv': BOOL,
    'dequantisation': OneOf('paper', 'code'), 'norm_from_minibatch': BOOL, 'skip_last_step': BOOL,
    # toy networks and data
    'n_hidden': Int(1), 'expert': OneOf('constant', 'linear', 'quadratic'), 'n_basis': Int(2),
    'n_layers': Int(1), 'readout': OneOf('basis', 'per_step'), 'basis_warp': OneOf('logit', 'linear'),
    'init_gain': Real(0), 'noise': Real(0), 'n_train': Int(1), 'n_eval': Int(2), 'n_final_eval': OptionalInt(2),
    # image networks and data
    'n_temporal_basis': Int(2), 'n_hidden_dense_lower': Int(1), 'n_hidden_dense_lower_output': Int(1),
    'n_hidden_dense_upper': Int(1), 'n_hidden_conv': Int(1), 'n_layers_conv': Int(1),
    'n_layers_dense_lower': Int(1), 'n_layers_dense_upper': Int(1), 'n_scales': Int(1),
    'folder': Folder(), 'patch': Int(2), 'image_size': Int(2),
}


def check_model_args(args):
    """ValueError naming the first key whose value is outside what it accepts (ARG_RULES)."""
    for key, value in args.items():
        rule = ARG_RULES[key]
        if not rule.accepts(value):
            raise ValueError('--model-args {}={!r}: {} must be {}'.format(key, value, key, rule))
    if 'n_hidden' in args and 'n_train' in args and args.get('expert') and args['n_hidden'] > args['n_train']:
        raise ValueError('--model-args n_hidden={}: the RBF centres start at n_train={} training '
                         'points, so n_hidden must be at most n_train'.format(args['n_hidden'], args['n_train']))


def model_args(dataset, fidelity, overrides):
    """The full model configuration: data-set defaults, then the preset, then --model-args.

    Raises KeyError naming the valid keys when an override is unknown, ValueError when a
    value is outside what its key accepts.
    """
    args = dict(MODEL_ARGS[dataset])
    if dataset in GAUSSIAN:
        preset = dict(PRESETS[fidelity], **DATASET_PRESETS.get((dataset, fidelity), {}))
        args.update({k: v for k, v in preset.items()
                     if dataset in IMAGES or k not in IMAGE_PRESET_KEYS})
    unknown = set(overrides) - set(args)
    if unknown:
        raise KeyError('unknown --model-args key(s) {} for {}; valid: {}'.format(
            ', '.join(sorted(unknown)), dataset, ', '.join(sorted(args))))
    args.update(overrides)
    check_model_args(args)
    return args


# ---------------------------------------------------------------- image set-up

# Table 1 of the paper, bits/pixel (MNIST was reported as a Parzen estimate instead).
PAPER_IMAGE_BOUNDS = {'bark': {'paper_K_bits': -0.55, 'paper_K_minus_Lnull_bits': 1.5},
                      'deadleaves': {'paper_K_bits': 1.489, 'paper_K_minus_Lnull_bits': 3.536},
                      'CIFAR10': {'paper_K_bits': 5.4, 'paper_K_minus_Lnull_bits': 11.5}}
IMAGE_NET_KEYS = ('n_temporal_basis', 'n_hidden_dense_lower', 'n_hidden_dense_lower_output',
                  'n_hidden_dense_upper', 'n_hidden_conv', 'n_layers_conv', 'n_layers_dense_lower',
                  'n_layers_dense_upper', 'n_scales', 'conv_path', 'nonlinearity',
                  'scale_nonlinearity', 'dense_depth_from_conv')


def pixel_moments(x, chunk=1000):
    """Mean and standard deviation of all values of uint8 images x, scaled to [0, 1]."""
    total = total_sq = 0.0
    for i in range(0, len(x), chunk):
        v = x[i:i + chunk].astype(np.float64) / 255
        total, total_sq = total + v.sum(), total_sq + np.square(v).sum()
    mean = total / x.size
    return mean, np.sqrt(total_sq / x.size - mean ** 2)


def image_data(dataset, args, seed, data_path):
    """uint8 (train, test) images (N, C, H, W) and the z-scoring (shift, scale) of SPEC
    section 4: shift = -mean, scale = 1 / std over the whole training set, or over one
    random minibatch of the default batch size if norm_from_minibatch (released code)."""
    options = {'deadleaves': {'size': args.get('image_size')},
               'bark': {'folder': args.get('folder'), 'patch': args.get('patch')}}.get(dataset, {})
    train, test = (datasets.load_images(dataset, split, data_path, **options) for split in ('train', 'test'))
    sample = train
    if args['norm_from_minibatch']:
        n = min(len(train), RUN_DEFAULTS[dataset]['batch_size'])
        sample = train[np.sort(np.random.default_rng([seed, 3]).choice(len(train), n, replace=False))]
    mean, std = pixel_moments(sample)
    return train, test, -mean, 1 / std


def image_diffusion(args, image_shape, rng, base):
    """GaussianDiffusion of an ImageNetwork read out through the temporal basis;
    base: b_t before learning."""
    T_steps = args['T']
    basis = M.temporal_basis(T_steps, args['n_temporal_basis'], args['basis_width'])
    net = R.ImageNetwork(image_shape, rng, **{k: args[k] for k in IMAGE_NET_KEYS})
    return M.GaussianDiffusion(M.TemporalReadout(net, basis), T_steps, basis, base, args['learn_beta'],
                               args['beta_1'], args['code_mu'], args['code_sigma'], args['kl_factor'])


class Experiment:
    """Data, diffusion model and compiled functions for one configuration.

    Image sets keep their data as uint8 (N, C, H, W); draw_inputs z-scores and
    dequantises each minibatch, and the bound is reported per pixel.
    """

    def __init__(self, dataset, args, seed, data_path=None):
        self.dataset, self.args, self.seed = dataset, args, seed
        rng = np.random.default_rng([seed, 0])
        T_steps = args['T']
        # toy sets: the bound per data vector, monitored on 5000 examples, 2000 at a time;
        # the final evaluation visits every step t of each held-out example once
        self.n_pixels, self.n_monitor, self.eval_batch_size = 1, 5000, 2000
        self.final_examples, self.final_draws = args.get('n_final_eval'), T_steps - 1
        if dataset == 'swissroll':
            self.train_x = datasets.swissroll(args['n_train'], [seed, 1], args['noise'])
            self.test_x = datasets.swissroll(args['n_eval'], [seed, 2], args['noise'])
            net = R.SwissRollRBF(T_steps, rng, self.train_x, args['n_hidden'], args['expert'])
            basis = M.temporal_basis(T_steps, args['n_basis'], args['basis_width'])
            self.diffusion = M.GaussianDiffusion(
                net, T_steps, basis, self.beta_base(), args['learn_beta'], args['beta_1'], args['code_mu'],
                args['code_sigma'], args['kl_factor'], args['beta_min'])
            self.null_bits = 2 * L_NULL_BITS_PER_DIM
        elif dataset == 'heartbeat':
            warp = M.noise_logit(T_steps) if args['basis_warp'] == 'logit' else None
            basis = (M.temporal_basis(T_steps, args['n_basis'], 'paper', warp)
                     if args['readout'] == 'basis' else None)
            net = R.HeartbeatMLP(T_steps, rng, n_hidden=args['n_hidden'], n_layers=args['n_layers'],
                                 basis=basis, init_gain=args['init_gain'])
            self.diffusion = M.BinomialDiffusion(net, T_steps, args['p'])
            self.train_x = datasets.heartbeat(args['n_train'], [seed, 1])
            self.test_x = datasets.heartbeat(args['n_eval'], [seed, 2])
            self.null_bits = self.diffusion.null_bits(self.train_x.shape[1])
        elif dataset in IMAGES:
            self.train_x, self.test_x, self.shift, self.scale = image_data(dataset, args, seed, data_path)
            C, H, W = self.train_x.shape[1:]
            self.diffusion = image_diffusion(args, (C, H, W), rng, self.beta_base())
            self.dequantisation_width = M.dequantisation_width(self.scale, args['dequantisation'])
            self.null_bits = C * L_NULL_BITS_PER_DIM  # per pixel, channels together
            self.n_pixels, self.n_monitor, self.eval_batch_size = H * W, 500, 100
            self.final_examples, self.final_draws = None, 1  # evaluate.py goes further
        else:
            raise KeyError(dataset)
        self.unit = 'bits/seq' if dataset == 'heartbeat' else 'bits/pixel' if dataset in IMAGES else 'bits'
        self.x0 = T.TensorType(floatX, (False,) * self.train_x.ndim)('x0')
        self.t = T.lvector('t')
        self.noise = T.TensorType(floatX, (False,) * self.train_x.ndim)('noise')
        self.K_nats = self.diffusion.bound_K(self.x0, self.t, self.noise)

    def beta_base(self):
        """b_t before learning: 'harmonic' (released code), 'geometric' (SPEC section 1) or
        'logit' (model.logit_beta)."""
        if self.args['beta_init'] == 'harmonic' or not self.args['learn_beta']:
            return M.harmonic_beta(self.args['T'])
        return {'geometric': M.geometric_beta, 'logit': M.logit_beta}[self.args['beta_init']](
            self.args['T'], self.args['beta_1'])

    @property
    def params(self):
        return self.diffusion.params

    def draw_inputs(self, rng, x0, evaluation=False, t=None):
        """Numpy inputs (x0, t, noise) of the compiled functions for a minibatch.

        evaluation=True: one t per example even where training draws one per minibatch
        (code preset), so that held-out examples are independent draws and stderr holds.
        t: the steps to use instead of drawing them.
        """
        if self.dataset in IMAGES:  # uint8 pixels -> z-scored, dequantised (SPEC section 4)
            x_z = M.zscore(x0, self.shift, self.scale)
            x0 = M.dequantise(x_z, rng.random(x0.shape), self.dequantisation_width)
        per_mb = self.args.get('t_per_minibatch', False) and not evaluation
        t = self.diffusion.draw_t(rng, len(x0), per_mb) if t is None else t
        return [x0.astype(floatX), t, self.diffusion.draw_noise(rng, x0)['noise']]

    def compile_train(self, step_rule):
        """(step function for the main loop, counter of dropped non-finite steps)."""
        import training
        n_dims = np.prod(self.train_x.shape[1:])
        cost = -self.K_nats.mean() / (n_dims * M.LOG2).astype(floatX)  # bits per dimension
        updates, n_nonfinite = training.descent_updates(cost, self.params, step_rule)
        fn = theano.function([self.x0, self.t, self.noise], [cost, n_nonfinite],
                             updates=updates)

        def step(batch, rng):
            cost_value, dropped = fn(*self.draw_inputs(rng, batch['features']))
            return {'cost_bits_per_dim': float(cost_value), 'n_nonfinite': int(dropped)}
        return step, n_nonfinite

    def compile_bound(self):
        """x0, t, noise -> K per example, nats."""
        return theano.function([self.x0, self.t, self.noise], self.K_nats)

    def heldout_bound(self, bound_fn, x, n_draws=1, seed=0, batch_size=None):
        """K on the held-out examples x, n_draws Monte Carlo draws of (t, noise) each.

        The draws of one example are stratified over t: draw d uses step
        2 + (u + floor(d (T - 1) / n_draws)) mod (T - 1) with u uniform per example, so
        every draw is uniform on 2..T and the n_draws steps spread evenly over the
        trajectory (n_draws = T - 1 visits every step once).
        Returns K_bits (per data vector; per pixel for images), K_minus_Lnull_bits,
        stderr_bits (standard error of the mean over examples of the per-example
        average), n_eval.
        """
        batch_size = batch_size or self.eval_batch_size
        rng = np.random.default_rng([seed, 12345])
        per_example = np.zeros(len(x))
        n_steps = self.diffusion.T_steps - 1
        offset = rng.integers(n_steps, size=len(x))
        for d in range(n_draws):
            t = 2 + (offset + d * n_steps // n_draws) % n_steps
            for i in range(0, len(x), batch_size):
                inputs = self.draw_inputs(rng, x[i:i + batch_size], True, t[i:i + batch_size])
                per_example[i:i + batch_size] += bound_fn(*inputs)
        k_bits = M.bits_per_pixel(per_example / n_draws, self.n_pixels)
        return {'K_bits': float(k_bits.mean()),
                'K_minus_Lnull_bits': float(k_bits.mean() - self.null_bits),
                'stderr_bits': float(k_bits.std(ddof=1) / np.sqrt(len(x))),
                'n_eval': int(len(x)), 'n_draws': int(n_draws), 'unit': self.unit}

    def beta_values(self):
        if isinstance(self.diffusion, M.GaussianDiffusion):
            return theano.function([], self.diffusion.schedule.beta())()
        return self.diffusion.beta_np

    def reference_values(self, n_exact=4000):
        """The paper's Table 1 numbers and, where known, the true log likelihood; for
        images also the z-scoring, x_z = (x / 255 + shift) * scale."""
        if self.dataset in IMAGES:
            return dict(PAPER_IMAGE_BOUNDS.get(self.dataset, {}), shift=self.shift, scale=self.scale)
        if self.dataset == 'swissroll':
            ll = datasets.swissroll_log_density(self.test_x[:n_exact], self.args['noise']) / M.LOG2
            return {'paper_K_bits': 2.35, 'paper_K_minus_Lnull_bits': 6.45,
                    'exact_ll_bits': float(ll.mean()),
                    'exact_ll_stderr_bits': float(ll.std(ddof=1) / np.sqrt(len(ll))),
                    'roll_noise_std': self.args['noise']}
        return {'paper_K_bits': -2.414, 'paper_K_minus_Lnull_bits': 12.024,
                'true_ll_bits': float(datasets.heartbeat_log_likelihood_bits()),
                'factorised_optimum_K_bits': self.diffusion.factorised_optimum_bits(
                    datasets.heartbeat_patterns())}


def checkpoint_model_config(state):
    """The model configuration a checkpoint was trained with; keys added since take the
    value that reproduces older runs (ADDED_KEYS)."""
    dataset = state['config']['args']['dataset']
    return dict(ADDED_KEYS.get(dataset, {}), **state['config']['model'])


def from_checkpoint(path, data_path=None):
    """The Experiment of a checkpoint written by train.py, its parameters loaded (by
    shared-variable name). data_path: else the run's --data-path. Raises ValueError
    (one line) when the file is not a checkpoint or does not fit the model it describes."""
    import training
    state = training.load_checkpoint(path)
    run_args = state['config']['args']
    config = checkpoint_model_config(state)
    exp = Experiment(run_args['dataset'], config, run_args['seed'], data_path or run_args.get('data_path'))
    for p in exp.params:
        if p.name not in state['shared']:
            raise ValueError('{} lacks parameter {}'.format(path, p.name))
        value = state['shared'][p.name]
        if np.shape(value) != np.shape(p.get_value()):
            raise ValueError('{}: parameter {} is {}, the model has {}'.format(
                path, p.name, np.shape(value), np.shape(p.get_value())))
        p.set_value(value)
    return exp
