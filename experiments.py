"""One experiment per data set: its data, its diffusion model, the units its bound is
reported in and how it is monitored. Each family is built from arrays (the data are
loaded first), so any caller can build one from data of its own; train.py, evaluate.py,
sampler.py and bench.py build them here from a configuration (presets.py; the one stored
in every checkpoint).
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import numpy as np
import theano
import theano.tensor as T

import bound
import checkpoints
import datasets
import model as M
import parallel
import presets
import regression as R
import steprules
import util

floatX = theano.config.floatX
L_NULL_BITS_PER_DIM = -0.5 * np.log2(2 * np.pi * np.e)  # N(0, 1) on unit-variance data
IMAGE_T_MIX = 0.5  # images: half the held-out bound's draws from the harmonic proposal (bound.py)
# train_t (bound.training_steps): a share of uniform steps mixed into the proposal, and the
# losses kept per step by the adaptive one (measured: docs/k_per_hour.md)
TRAIN_T_UNIFORM, TRAIN_T_HISTORY = 0.5, 10
IMAGE_NET_KEYS = ('n_temporal_basis', 'n_hidden_dense_lower', 'n_hidden_dense_lower_output',
                  'n_hidden_dense_upper', 'n_hidden_conv', 'n_layers_conv', 'n_layers_dense_lower',
                  'n_layers_dense_upper', 'n_scales', 'conv_path', 'dense_path', 'nonlinearity',
                  'scale_nonlinearity', 'dense_depth_from_conv', 'conv_impl', 'tied_biases', 'feature_scaling')


class PixelUnits:
    """How 8-bit pixels become the model's data, and back
    (docs/paper_and_code.md, section 3, items 10 and 17).

    z-scoring: x_z = (x / 255 + shift) * scale, so adjacent levels are scale / 255 apart;
    dequantisation (Theis et al. 2015): uniform noise of width w added to x_z, so the
    data have a density and K is a proper bound. dequantisation='paper': w = one 8-bit
    level, scale / 255, noise U(0, 1) w; 'code': the released code's w = (1 / 255) / scale
    (likely a bug) and its centred noise U(-1/2, 1/2) w.
    """

    def __init__(self, shift, scale, dequantisation):
        self.shift, self.scale = shift, scale
        self.width = scale / 255 if dequantisation == 'paper' else 1 / (255 * scale)
        self.centred = dequantisation == 'code'

    @classmethod
    def of_images(cls, x, dequantisation, chunk=1000):
        """shift = -mean, scale = 1 / std of all values of uint8 images x in [0, 1] units."""
        total = total_sq = 0.0
        for i in range(0, len(x), chunk):
            v = cls.unit(x[i:i + chunk])
            total, total_sq = total + v.sum(), total_sq + np.square(v).sum()
        mean = total / x.size
        return cls(-mean, 1 / np.sqrt(total_sq / x.size - mean ** 2), dequantisation)

    @staticmethod
    def unit(x_uint8, dtype=np.float64):
        """8-bit pixels -> the [0, 1] scale, float64 (or dtype)."""
        return np.asarray(x_uint8, dtype=dtype) / dtype(255)

    @property
    def level_spacing(self):
        """The distance between adjacent 8-bit levels in model units."""
        return self.scale / 255

    def zscore(self, x_uint8):
        """8-bit pixels -> model units, float64."""
        return self.from_unit(self.unit(x_uint8))

    def dequantise(self, x_uint8, rng):
        """z-scored pixels plus uniform noise of width w (float64)."""
        u = rng.random(np.shape(x_uint8))
        return self.zscore(x_uint8) + self.width * (u - 0.5 if self.centred else u)

    def from_unit(self, x):
        """Pixels on the [0, 1] scale -> model units."""
        return (x + self.shift) * self.scale

    def to_unit(self, x):
        """Model units -> pixels on the [0, 1] scale (not clipped), float64."""
        return np.asarray(x, np.float64) / self.scale - self.shift


class Experiment:
    """Data, diffusion model and compiled functions for one configuration.

    dataset, args (the model configuration), seed; train_x, test_x: the data (uint8
    (N, C, H, W) for images, float32 vectors for the toys); diffusion: a
    GaussianDiffusion or BinomialDiffusion; pixels: PixelUnits, or None for data that are
    used as they are; unit: K is reported in it, per data vector divided by the number of
    pixels for images (n_pixels); null_bits: L_null in that unit; truth: a function returning reference
    values of the data (exact log likelihoods), or None; n_monitor, eval_batch_size: the
    training monitor's examples and the evaluation minibatch; monitor_draws: the
    monitor's draws per example; final_examples, final_draws: the held-out examples
    (None: all) and draws per example of train.py's final bound; crop: train on random
    crops of this side (a fully convolutional image network), evaluate on whole images;
    t_mix: how much the held-out bound's steps favour the first ones (bound.py).
    steps: how training draws its steps t (bound.training_steps: args train_t,
    train_t_uniform, train_t_history).
    """

    def __init__(self, dataset, args, seed, train_x, test_x, diffusion, unit, null_bits,
                 pixels=None, truth=None, n_monitor=5000, monitor_draws=1, eval_batch_size=2000,
                 final_examples=None, final_draws=1, crop=None, t_mix=0.0):
        self.dataset, self.args, self.seed = dataset, args, seed
        self.train_x, self.test_x, self.diffusion, self.pixels = train_x, test_x, diffusion, pixels
        self.unit, self.null_bits, self.truth = unit, null_bits, truth
        self.n_monitor, self.monitor_draws, self.eval_batch_size = n_monitor, monitor_draws, eval_batch_size
        self.crop, self.t_mix = crop, t_mix
        self.final_examples, self.final_draws = final_examples, final_draws
        self.x0 = T.TensorType(floatX, (False,) * train_x.ndim)('x0')
        self.t = T.lvector('t')
        self.noise = T.TensorType(floatX, (False,) * train_x.ndim)('noise')
        self.K_nats = diffusion.bound_K(self.x0, self.t, self.noise)
        self.steps = bound.training_steps(diffusion, args.get('train_t', 'uniform'),
                                          args.get('train_t_uniform', TRAIN_T_UNIFORM),
                                          args.get('train_t_history', TRAIN_T_HISTORY))

    @property
    def params(self):
        return self.diffusion.params

    def n_pixels(self, x):
        """What K per data vector of x is divided by: the pixels of an image (all channels
        together, as Table 1 counts them), 1 for the toys."""
        return x.shape[2] * x.shape[3] if self.pixels else 1

    def draw_inputs(self, rng, x0, evaluation=False, t=None):
        """Numpy inputs (x0, t, noise) of the bound's functions for a minibatch: training
        images are cropped (if crop), images are z-scored and dequantised
        (docs/paper_and_code.md, section 3, item 10),
        then t and the noise are drawn.

        evaluation=True: whole images, and one t per example even where training draws one
        per minibatch (code preset), so that held-out examples are independent draws and
        stderr holds. t: the steps to use instead of drawing them uniformly.
        """
        return self.draw_training_inputs(rng, x0, evaluation, t)[:3]

    def draw_training_inputs(self, rng, x0, evaluation=False, t=None):
        """draw_inputs, the steps drawn by the training sampler (self.steps), and their
        importance weights last: [x0, t, noise, weights]."""
        if self.crop and not evaluation:
            x0 = random_crops(x0, self.crop, rng)
        if self.pixels is not None:
            x0 = self.pixels.dequantise(x0, rng)
        weights = np.ones(len(x0), floatX)
        if t is None:
            per_mb = self.args.get('t_per_minibatch', False) and not evaluation
            steps = bound.UniformSteps(self.diffusion) if evaluation else self.steps
            t, weights = steps.draw(rng, len(x0), per_mb)
        return [x0.astype(floatX), t, self.diffusion.draw_noise(rng, x0), weights]

    def training_terms(self):
        """(symbolic inputs, K per example in nats, what the step sampler records per
        example): the training estimate of Eq. 14, importance-weighted when the steps come
        from a proposal (bound.py). The sampler records each example's KL, or for
        train_t='gradient' the norm of the KL's gradient with respect to the network's
        outputs (what the step contributes to the parameters' gradient, without the part of
        the KL that no network can remove)."""
        inputs = [self.x0, self.t, self.noise]
        if not self.steps.weighted:
            return inputs, self.K_nats, None
        weight = T.vector('t_weight')
        kl, z = self.diffusion.kl_and_outputs(self.x0, self.t, self.noise)
        K = -self.diffusion.kl_multiplier * weight * kl + self.diffusion.edge_entropies(self.x0)
        signal = kl
        if self.args.get('train_t') == 'gradient':
            grads = T.grad(kl.sum(), list(z))
            signal = T.sqrt(sum(M.per_example(T.sqr(g)) for g in grads))
        return inputs + [weight], K, signal

    def compile_train(self, step_rule, comm=None, average=None):
        """(step function for the main loop, counter of dropped non-finite steps); the cost
        is -K in bits per dimension, averaged over the minibatch. average: a
        steprules.ParameterAverage that follows the parameters (or None). The step sampler
        (self.steps) gets each example's KL after the step (an adaptive proposal learns
        from them).

        One process: one compiled function computes the cost, its gradient and the update.
        Several (comm, parallel.py): every process draws the inputs of the whole global
        minibatch from the iteration's generator, so the randomness does not depend on the
        rank; computes the gradient of its contiguous share of the minibatch's summed cost;
        the gradients, the cost and the examples' KL are added over the processes in one
        Allreduce of a flat float32 buffer; and every process takes the same step (a
        non-finite sum is treated alike everywhere, as args['nonfinite_gradient'] says:
        steprules.gradient_updates) and records the same KL.
        """
        comm = comm or parallel.SingleProcess()
        n_dims = self.train_x.shape[1] * self.crop ** 2 if self.crop else np.prod(self.train_x.shape[1:])
        inputs, K_nats, kl = self.training_terms()
        weighted = self.steps.weighted
        if comm.size == 1:
            cost = -K_nats.mean() / (n_dims * util.LOG2).astype(floatX)  # bits per dimension
            updates, n_nonfinite = steprules.descent_updates(cost, self.params, step_rule,
                                                            self.args['nonfinite_gradient'], average)
            fn = theano.function(inputs, [cost, n_nonfinite] + ([kl] if weighted else []), updates=updates)

            def step(batch, rng):
                x0, t, noise, weights = self.draw_training_inputs(rng, batch['features'])
                out = fn(x0, t, noise, *([weights] if weighted else []))
                if weighted:
                    self.steps.record(t, out[2])
                return {'cost_bits_per_dim': float(out[0]), 'n_nonfinite': int(out[1])}
            return step, n_nonfinite
        scale = T.scalar('scale')  # 1 / (global minibatch x dimensions x ln 2)
        cost_part = -K_nats.sum() * scale
        flat = [cost_part.reshape((1,))] + ([T.cast(kl, floatX)] if weighted else [])
        flat += [g.flatten() for g in T.grad(cost_part, self.params)]
        gradient = theano.function(inputs + [scale], T.concatenate(flat))  # (1 [+ n] + parameters,)
        take_step, n_nonfinite = steprules.flat_gradient_step(self.params, step_rule,
                                                             self.args['nonfinite_gradient'], average)
        n_params = sum(p.get_value().size for p in self.params)

        def parallel_step(batch, rng):
            x0, t, noise, weights = self.draw_training_inputs(rng, batch['features'])
            n = len(x0)
            a, b = comm.share(n)
            to_bits = np.float32(1 / (n * n_dims * util.LOG2))
            extra = [weights[a:b]] if weighted else []
            n_kl = n if weighted else 0
            part = np.zeros(1 + n_kl + n_params, floatX)
            if b > a:
                local = gradient(x0[a:b], t[a:b], noise[a:b], *extra, to_bits)
                n_local = b - a if weighted else 0
                part[:1], part[1 + n_kl:] = local[:1], local[1 + n_local:]
                part[1 + a:1 + a + n_local] = local[1:1 + n_local]
            total = comm.allreduce_sum(part)
            if weighted:
                self.steps.record(t, total[1:1 + n])
            return {'cost_bits_per_dim': float(total[0]), 'n_nonfinite': int(take_step(total[1 + n_kl:]))}
        return parallel_step, n_nonfinite

    def params_checksum(self):
        """A float that tells whether two processes hold the same parameters."""
        return float(sum(np.sum(p.get_value(), dtype=np.float64) * (i + 1) for i, p in enumerate(self.params)))

    def reference_values(self):
        """The paper's Table 1 figures and what is known of the data (truth)."""
        out = {}
        if self.dataset in presets.TABLE_1:
            out['paper_K_bits'], out['paper_K_minus_Lnull_bits'] = presets.TABLE_1[self.dataset]
        if self.pixels is not None:
            out.update(shift=self.pixels.shift, scale=self.pixels.scale)
        out.update(self.truth() if self.truth else {})
        return out


def random_crops(x, size, rng):
    """One size x size square of each image of x (n, C, H, W), at a position drawn from rng."""
    n, _, H, W = x.shape
    tops, lefts = rng.integers(0, H - size + 1, n), rng.integers(0, W - size + 1, n)
    return np.stack([im[:, a:a + size, b:b + size] for im, a, b in zip(x, tops, lefts)])


# ---------------------------------------------------------------- the families

def beta_base(args):
    """b_t before learning: 'harmonic' (released code), 'geometric' or 'logit' (model.py)."""
    if args['beta_init'] == 'harmonic' or not args['learn_beta']:
        return M.harmonic_beta(args['T'])
    return {'geometric': M.geometric_beta, 'logit': M.logit_beta}[args['beta_init']](args['T'], args['beta_1'])


def swissroll_experiment(args, seed, train_x, test_x):
    """Gaussian diffusion of 2-D points with the RBF network (Appendix D.1.1); K in bits
    per point; the final bound visits every step of each held-out point once."""
    T_steps = args['T']
    net = R.SwissRollRBF(T_steps, np.random.default_rng([seed, 0]), train_x, args['n_hidden'], args['expert'])
    basis = R.temporal_basis(T_steps, args['n_basis'], args['basis_width'])
    diffusion = M.GaussianDiffusion(net, T_steps, basis, beta_base(args), args['learn_beta'], args['beta_1'],
                                    args['code_mu'], args['code_sigma'], args['kl_factor'], args['beta_min'])

    def truth(n_exact=4000):
        ll = datasets.swissroll_log_density(test_x[:n_exact], args['noise']) / util.LOG2
        return {'exact_ll_bits': float(ll.mean()), 'exact_ll_stderr_bits': float(ll.std(ddof=1) / np.sqrt(len(ll))),
                'roll_noise_std': args['noise']}
    return Experiment('swissroll', args, seed, train_x, test_x, diffusion, 'bits', 2 * L_NULL_BITS_PER_DIM,
                      truth=truth, final_examples=args.get('n_final_eval'), final_draws=T_steps - 1)


def heartbeat_experiment(args, seed, train_x, test_x):
    """Binomial diffusion of binary sequences with the sigmoid MLP (Appendix D.1.2); K in
    bits per sequence; the final bound visits every step of each held-out sequence once."""
    T_steps = args['T']
    warp = R.noise_logit(T_steps) if args['basis_warp'] == 'logit' else None
    basis = R.temporal_basis(T_steps, args['n_basis'], 'paper', warp) if args['readout'] == 'basis' else None
    net = R.HeartbeatMLP(T_steps, np.random.default_rng([seed, 0]), n_hidden=args['n_hidden'],
                         n_layers=args['n_layers'], basis=basis, init_gain=args['init_gain'])
    diffusion = M.BinomialDiffusion(net, T_steps, args['p'])

    def truth():
        return {'true_ll_bits': float(datasets.heartbeat_log_likelihood_bits()),
                'factorised_optimum_K_bits': diffusion.factorised_optimum_bits(datasets.heartbeat_patterns())}
    return Experiment('heartbeat', args, seed, train_x, test_x, diffusion, 'bits/seq',
                      diffusion.null_bits(train_x.shape[1]), truth=truth,
                      final_examples=args.get('n_final_eval'), final_draws=T_steps - 1)


def image_experiment(dataset, args, seed, train_x, test_x):
    """Gaussian diffusion of uint8 images (N, C, H, W) with the image network read out
    through the temporal basis (Appendix D.2.1). z-scoring from the whole training set, or
    from one random minibatch of the default batch size if norm_from_minibatch (released
    code). K in bits per pixel, channels together; evaluate.py goes beyond the final
    bound's one draw per held-out image."""
    sample = train_x
    if args['norm_from_minibatch']:
        n = min(len(train_x), presets.RUN_DEFAULTS[dataset]['batch_size'])
        sample = train_x[np.sort(np.random.default_rng([seed, 3]).choice(len(train_x), n, replace=False))]
    pixels = PixelUnits.of_images(sample, args['dequantisation'])
    C, H, W = train_x.shape[1:]
    check_crop(args, H, W)
    basis = R.temporal_basis(args['T'], args['n_temporal_basis'], args['basis_width'])
    net = R.ImageNetwork((C, H, W), np.random.default_rng([seed, 0]), **{k: args[k] for k in IMAGE_NET_KEYS})
    diffusion = M.GaussianDiffusion(R.TemporalReadout(net, basis), args['T'], basis, beta_base(args),
                                    args['learn_beta'], args['beta_1'], args['code_mu'], args['code_sigma'],
                                    args['kl_factor'])
    # the monitor: up to 500 held-out images with enough draws each (about 2000 in all) that
    # its standard error is small against what it has to show (a few hundredths of a bit);
    # the final bound: every held-out image, about 10000 draws in all (with one draw per
    # image the heavy tail of the first steps' costs makes the standard error unreliable:
    # measured on the digits, 297 images, -0.41 +- 0.05 bits/pixel against -0.785 +- 0.028
    # with 20 draws each)
    n_monitor = min(500, len(test_x))
    return Experiment(dataset, args, seed, train_x, test_x, diffusion, 'bits/pixel', C * L_NULL_BITS_PER_DIM,
                      pixels=pixels, n_monitor=n_monitor, monitor_draws=min(10, max(1, 2000 // n_monitor)),
                      final_draws=min(20, max(1, 10000 // len(test_x))), eval_batch_size=100, crop=args['crop'],
                      t_mix=IMAGE_T_MIX)


def check_crop(args, H, W):
    """ValueError unless a crop fits the images, the scales and a fully convolutional network."""
    crop, factor = args['crop'], 2 ** (args['n_scales'] - 1)
    if crop is None:
        return
    if args['dense_path']:
        raise ValueError('--model-args crop={}: training on crops needs dense_path=False (the dense '
                         'path is tied to the image size)'.format(crop))
    if not args['tied_biases']:
        raise ValueError('--model-args crop={}: training on crops needs tied_biases=True (untied '
                         'biases are tied to the image size)'.format(crop))
    if crop > min(H, W) or crop % factor:
        raise ValueError('--model-args crop={}: must be at most the images\' {}x{} and divisible by '
                         '2^(n_scales - 1) = {}'.format(crop, H, W, factor))


def load_data(dataset, args, seed, data_path=None):
    """(train, test) arrays of a data set: the toys made from the seed, images loaded."""
    if dataset == 'swissroll':
        return (datasets.swissroll(args['n_train'], [seed, 1], args['noise']),
                datasets.swissroll(args['n_eval'], [seed, 2], args['noise']))
    if dataset == 'heartbeat':
        return datasets.heartbeat(args['n_train'], [seed, 1]), datasets.heartbeat(args['n_eval'], [seed, 2])
    options = {'deadleaves': {'size': args.get('image_size')},
               'bark': {'folder': args.get('folder'), 'patch': args.get('patch')},
               'folder': {k: args.get(k) for k in ('folder', 'image_size', 'channels')}}.get(dataset, {})
    return datasets.load_splits(dataset, datasets.SPLITS, data_path, **options)


def grey_paper_images(name, seed, data_path=None):
    """(dataset, paper preset's model arguments, train, test): the uint8 images of a grey image
    data set as training loads them under the paper preset (ceiling.py and baseline.py);
    ValueError (one line, naming --dataset) for an unknown name, a missing data file or colour
    images."""
    try:
        dataset = datasets.canonical_name(name)
    except ValueError as e:
        raise ValueError('--dataset: {}'.format(e))
    config = presets.model_args(dataset, 'paper', {})
    train_x, test_x = load_data(dataset, config, seed, data_path)
    if train_x.shape[1] != 1:
        raise ValueError('--dataset {}: has {} channels; give a grey image data set'.format(dataset, train_x.shape[1]))
    return dataset, config, train_x, test_x


def from_arrays(dataset, args, seed, train_x, test_x):
    """The experiment of `dataset` on given data."""
    if dataset in presets.IMAGES:
        return image_experiment(dataset, args, seed, train_x, test_x)
    return {'swissroll': swissroll_experiment, 'heartbeat': heartbeat_experiment}[dataset](
        args, seed, train_x, test_x)


def build(dataset, args, seed, data_path=None):
    """The experiment of `dataset` with model configuration `args` (presets.model_args):
    data loaded or made, model built. Raises ValueError (datasets.DataMissing) when a
    data file is missing, ValueError when the network does not fit the data."""
    return from_arrays(dataset, args, seed, *load_data(dataset, args, seed, data_path))


def from_checkpoint(path, data_path=None, ema=True):
    """The Experiment of a checkpoint written by train.py, its parameters loaded (by
    shared-variable name): the average of the parameters where the run kept one
    (steprules.ParameterAverage) and `ema`, else the last parameters. data_path: else the
    run's --data-path. Raises ValueError (one line) when the file is not a checkpoint or
    does not fit the model it describes."""
    state = checkpoints.load_checkpoint(path)
    checkpoints.require(state, path, (('config.args', dict), ('config.args.dataset', str), ('config.args.seed', int),
                                   ('config.model', dict)))
    run_args = state['config']['args']
    if run_args['dataset'] not in presets.MODEL_ARGS:
        raise ValueError('{} is not a checkpoint of this project, or is damaged: its dataset is {!r}'.format(
            path, run_args['dataset']))
    try:
        exp = build(run_args['dataset'], presets.checkpoint_model_config(state), run_args['seed'],
                    data_path or run_args.get('data_path'))
    except KeyError as e:  # a model argument the network needs
        raise ValueError('{} is not a complete checkpoint of this project: its model lacks {}'.format(
            path, e.args[0]))
    load_parameters(exp, state, path, ema)
    return exp


def load_parameters(exp, state, path, ema=False):
    """Set the experiment's parameters from the checkpoint `state` (read from `path`) by
    name, their average 'ema/<name>' if `ema` and the run kept one; ValueError (one line)
    when one is missing or has another shape."""
    for p in exp.params:
        name = steprules.AVERAGE_PREFIX + p.name if ema and exp.args.get('ema') else p.name
        if name not in state['shared']:
            raise ValueError('{} lacks parameter {}'.format(path, name))
        value = state['shared'][name]
        if np.shape(value) != np.shape(p.get_value()):
            raise ValueError('{}: parameter {} is {}, the model has {}'.format(
                path, p.name, np.shape(value), np.shape(p.get_value())))
        p.set_value(np.asarray(value, dtype=p.dtype))
