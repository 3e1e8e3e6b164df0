"""One experiment per data set: its data, its model and the defaults the released
code or the paper gives it. train.py, evaluate.py and sampler.py build models
here from a configuration (the one stored in every checkpoint).
"""
import util  # noqa: F401  (configures Theano before it is imported)

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
                  basis_width='paper', t_per_minibatch=False),
    'code': dict(learn_beta=False, code_mu=True, code_sigma=True, kl_factor='T',
                 basis_width='code', t_per_minibatch=True),
}

# Model arguments of each data set (keys of --model-args) and training defaults for
# this 2-core machine (batch_size, lr, max_batches, ext_every_n).
MODEL_ARGS = {
    'swissroll': dict(T=40, n_hidden=16, local_linear=True, n_basis=10, beta_init='geometric', beta_1=1e-6,
                      noise=datasets.SWISSROLL_NOISE, n_train=200000, n_eval=20000),
    'heartbeat': dict(T=2000, n_hidden=50, n_layers=3, p=0.2, n_train=100000, n_eval=20000),
}
RUN_DEFAULTS = {
    'swissroll': dict(batch_size=512, lr=1e-3, max_batches=20000, ext_every_n=1000),
    'heartbeat': dict(batch_size=512, lr=1e-3, max_batches=20000, ext_every_n=1000),
}
GAUSSIAN = ('swissroll',)


def model_args(dataset, fidelity, overrides):
    """The full model configuration: data-set defaults, then the preset, then --model-args.

    Raises KeyError naming the valid keys when an override is unknown.
    """
    args = dict(MODEL_ARGS[dataset])
    if dataset in GAUSSIAN:
        args.update(PRESETS[fidelity])
    unknown = set(overrides) - set(args)
    if unknown:
        raise KeyError('unknown --model-args key(s) {} for {}; valid: {}'.format(
            ', '.join(sorted(unknown)), dataset, ', '.join(sorted(args))))
    args.update(overrides)
    return args


class Experiment:
    """Data, diffusion model and compiled functions for one configuration."""

    def __init__(self, dataset, args, seed):
        self.dataset, self.args, self.seed = dataset, args, seed
        rng = np.random.default_rng([seed, 0])
        T_steps = args['T']
        if dataset == 'swissroll':
            self.train_x = datasets.swissroll(args['n_train'], [seed, 1], args['noise'])
            self.test_x = datasets.swissroll(args['n_eval'], [seed, 2], args['noise'])
            net = R.SwissRollRBF(T_steps, rng, self.train_x, args['n_hidden'], args['local_linear'])
            basis = M.temporal_basis(T_steps, args['n_basis'], args['basis_width'])
            self.diffusion = M.GaussianDiffusion(
                net, T_steps, basis, self.beta_base(), args['learn_beta'], args['beta_1'], args['code_mu'],
                args['code_sigma'], args['kl_factor'])
            self.null_bits = 2 * L_NULL_BITS_PER_DIM
        elif dataset == 'heartbeat':
            net = R.HeartbeatMLP(T_steps, rng, n_hidden=args['n_hidden'], n_layers=args['n_layers'])
            self.diffusion = M.BinomialDiffusion(net, T_steps, args['p'])
            self.train_x = datasets.heartbeat(args['n_train'], [seed, 1])
            self.test_x = datasets.heartbeat(args['n_eval'], [seed, 2])
            self.null_bits = self.diffusion.null_bits(self.train_x.shape[1])
        else:
            raise KeyError(dataset)
        self.unit = 'bits/seq' if dataset == 'heartbeat' else 'bits'
        self.x0 = T.TensorType(floatX, (False,) * self.train_x.ndim)('x0')
        self.t = T.lvector('t')
        self.noise = T.TensorType(floatX, (False,) * self.train_x.ndim)('noise')
        self.K_nats = self.diffusion.bound_K(self.x0, self.t, self.noise)

    def beta_base(self):
        """b_t before learning: 'harmonic' (released code) or 'geometric' (SPEC section 1)."""
        if self.args['beta_init'] == 'harmonic' or not self.args['learn_beta']:
            return M.harmonic_beta(self.args['T'])
        return M.geometric_beta(self.args['T'], self.args['beta_1'])

    @property
    def params(self):
        return self.diffusion.params

    def draw_inputs(self, rng, x0):
        """Numpy inputs (x0, t, noise) of the compiled functions for a minibatch."""
        per_mb = self.args.get('t_per_minibatch', False)
        t = self.diffusion.draw_t(rng, len(x0), per_mb)
        return [x0.astype(floatX), t, self.diffusion.draw_noise(rng, x0)['noise']]

    def compile_train(self, step_rule):
        """(step function for the main loop, counter of dropped non-finite steps)."""
        import training
        n_dims = np.prod(self.train_x.shape[1:])
        cost = -self.K_nats.mean() / (n_dims * M.LOG2)  # bits per dimension
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

    def heldout_bound(self, bound_fn, x, n_draws=1, seed=0, batch_size=2000):
        """K on the held-out examples x, n_draws Monte Carlo draws of (t, noise) each.

        Returns K_bits (per data vector), K_minus_Lnull_bits, stderr_bits (standard
        error of the mean over examples of the per-example average), n_eval.
        """
        rng = np.random.default_rng([seed, 12345])
        per_example = np.zeros(len(x))
        for _ in range(n_draws):
            for i in range(0, len(x), batch_size):
                per_example[i:i + batch_size] += bound_fn(*self.draw_inputs(rng, x[i:i + batch_size]))
        k_bits = per_example / n_draws / M.LOG2
        return {'K_bits': float(k_bits.mean()),
                'K_minus_Lnull_bits': float(k_bits.mean() - self.null_bits),
                'stderr_bits': float(k_bits.std(ddof=1) / np.sqrt(len(x))),
                'n_eval': int(len(x)), 'n_draws': int(n_draws), 'unit': self.unit}

    def beta_values(self):
        if isinstance(self.diffusion, M.GaussianDiffusion):
            return theano.function([], self.diffusion.schedule.beta())()
        return self.diffusion.beta_np

    def reference_values(self, n_exact=4000):
        """The paper's Table 1 numbers and, where known, the true log likelihood."""
        if self.dataset == 'swissroll':
            ll = datasets.swissroll_log_density(self.test_x[:n_exact], self.args['noise']) / M.LOG2
            return {'paper_K_bits': 2.35, 'paper_K_minus_Lnull_bits': 6.45,
                    'exact_ll_bits': float(ll.mean()),
                    'exact_ll_stderr_bits': float(ll.std(ddof=1) / np.sqrt(len(ll))),
                    'roll_noise_std': self.args['noise']}
        return {'paper_K_bits': -2.414, 'paper_K_minus_Lnull_bits': 12.024,
                'true_ll_bits': float(datasets.heartbeat_log_likelihood_bits())}
