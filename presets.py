"""What the paper says, what the released code does, and what we chose: the presets of
`--fidelity paper|code` (docs/paper_and_code.md, section 3), each data set's model
arguments and training
defaults, what every `--model-args` key accepts, Table 1, and the list of our choices
where a "paper" run is not the paper.
"""
import os

import numpy as np

# Paper-vs-code choices of the Gaussian model (docs/paper_and_code.md, section 3). Each is a
# --model-args key.
PRESETS = {
    'paper': dict(learn_beta=True, code_mu=False, code_sigma=False, kl_factor='T-1',
                  basis_width='paper', t_per_minibatch=False,
                  nonlinearity='paper', scale_nonlinearity='after_sum', conv_path=True, dense_path=True,
                  dense_depth_from_conv=False, dequantisation='paper', norm_from_minibatch=False,
                  skip_last_step=False, tied_biases=True, feature_scaling=False, nonfinite_gradient='drop_step'),
    'code': dict(learn_beta=False, code_mu=True, code_sigma=True, kl_factor='T',
                 basis_width='code', t_per_minibatch=True, beta_init='harmonic',
                 nonlinearity='code', scale_nonlinearity='per_scale', conv_path=True, dense_path=True,
                 dense_depth_from_conv=True, dequantisation='code', norm_from_minibatch=True,
                 skip_last_step=True,  # the released sampler stops at x^1
                 # Blocks' convolutions of 2015 had untied biases; regression.py's Y / sqrt(n_hidden_conv)
                 # and Y_dense / sqrt(n_hidden_dense_lower_output); CompositeRule([RemoveNotFinite(), RMSProp])
                 tied_biases=False, feature_scaling=True, nonfinite_gradient='zero_gradient'),
}
# 'fast': the paper preset's model and bound, trained the fastest way measured here (the
# ablation of docs/k_per_hour.md); each change is ours, not the paper's (FAST_CHOICES), and
# is listed with the paper's own non-paper choices in results.json and REPORT.md.
FAST = dict(train_t='adaptive', train_t_uniform=0.1)
PRESETS['fast'] = dict(PRESETS['paper'], **FAST)
# run settings of the fast preset (train.py), where the data set's defaults differ
FAST_RUN_SETTINGS = {'optimizer': 'adam'}
# An average of the parameters (ema) is not in it: with Adam it was 0.45 bits/pixel below the
# last parameters after 30 dead-leaves minutes and 0.06 below after 60 (docs/k_per_hour.md).
FAST_CHOICES = {
    'train_t': ('t uniform on 2..T', 'adaptive, with Adam: on dead leaves +0.34 bits/pixel over the paper '
                'preset after 60 minutes (0.336 +- 0.022 against -0.069 +- 0.010), -0.19 after 30; with '
                'RMSProp +0.27 after 3000 minibatches; the harmonic proposal lost 1.3 at 1500'),
    'train_t_uniform': ('-', 'the uniform share of the adaptive proposal: 0.1, the one value measured'),
}
FAST_OPTIMIZER = ('optimizer', 'SFO', 'Adam, learning rate 1e-3: +0.23 bits/pixel over RMSProp on dead leaves after '
                  '3000 minibatches (-0.203 +- 0.009 against -0.435 +- 0.012); slower over the first 2000; '
                  '3e-3 learned slower')

# Preset keys that only the image sets have (docs/paper_and_code.md, section 3).
IMAGE_PRESET_KEYS = ('nonlinearity', 'scale_nonlinearity', 'conv_path', 'dense_path', 'dense_depth_from_conv',
                     'dequantisation', 'norm_from_minibatch', 'tied_biases', 'feature_scaling')
# A preset's value that differs by data set: the paper's MNIST network was dense-only
# (Appendix D.2.1); the Swiss roll reads the mean out in the code's form (OUR_CHOICES).
# The paper's dead-leaves and bark networks (Figure D.1: no dense path) are fully
# convolutional: they train on random crops and are evaluated on whole images. Its MNIST
# network was dense-only, as is ours for the 8x8 digits (Appendix D.2.1).
FULLY_CONVOLUTIONAL = dict(dense_path=False, crop=32, n_scales=4, n_hidden_conv=32, n_layers_conv=4,
                           n_hidden_dense_upper=64, n_layers_dense_upper=3)
PAPER_DATASET_PRESETS = {'MNIST': dict(conv_path=False), 'digits': dict(conv_path=False),
                         'mnist5k': dict(conv_path=False),
                         'deadleaves': dict(FULLY_CONVOLUTIONAL, image_size=64),
                         'bark': dict(FULLY_CONVOLUTIONAL), 'swissroll': dict(code_mu=True),
                         'folder': dict(FULLY_CONVOLUTIONAL)}  # your own images: bark's network
DATASET_PRESETS = {(name, fidelity): v for name, v in PAPER_DATASET_PRESETS.items() for fidelity in ('paper', 'fast')}

OPTIMIZERS = ('adam', 'rmsprop')  # the step rules of steprules.STEP_RULES
# Step-rule arguments of each preset: the released training passed max_scaling=1e10 to
# RMSProp; steprules.RMSProp's default 1e5 is ours (the paper trained with SFO).
STEP_RULE_ARGS = {'paper': {}, 'fast': {}, 'code': {'rmsprop': {'max_scaling': 1e10}}}

# How training estimates K, for every data set (bound.training_steps, steprules.ParameterAverage):
# the steps t uniform (the paper's and the released code's) or from a proposal with
# importance weights, and an average of the parameters for evaluation and sampling (None:
# none). The 'fast' preset changes them (FAST).
TRAINING_ESTIMATE = dict(train_t='uniform', train_t_uniform=0.5, train_t_history=10, ema=None)

SWISSROLL_NOISE = 0.005  # std of the Swiss roll's noise, in spiral units (before scaling; datasets.swissroll)

# Model arguments of each data set (keys of --model-args).
MODEL_ARGS = {
    'swissroll': dict(T=40, n_hidden=64, expert='quadratic', n_basis=10, beta_init='logit', beta_1=1e-7,
                      beta_min=1e-7, noise=SWISSROLL_NOISE, n_train=200000, n_eval=20000,
                      **TRAINING_ESTIMATE),
    'heartbeat': dict(T=2000, n_hidden=100, n_layers=3, readout='basis', n_basis=20,
                      basis_warp='logit', init_gain=4.0, p=0.2, n_train=100000, n_eval=20000,
                      n_final_eval=1000, nonfinite_gradient='drop_step', **TRAINING_ESTIMATE),
}
# Images: the released code's network defaults (its MNIST run) under its own names, T and
# the temporal basis; b_1 = 1e-3 for the learned schedule of the paper preset (OUR_CHOICES).
# conv_impl: the 3x3 convolution; 'auto' takes Winograd F(2x2, 3x3) of conv3x3.py for
# layers with 8 or more input channels and Theano's CorrMM (the released code's) below, the
# faster on each (regression.WINOGRAD_MIN_CHANNELS, docs/performance.md); 'corrmm',
# 'winograd', 'im2col' force one.
IMAGE_DEFAULTS = dict(T=1000, n_temporal_basis=10, beta_init='harmonic', beta_1=1e-3,
                      n_hidden_dense_lower=500, n_hidden_dense_lower_output=2,
                      n_hidden_dense_upper=20, n_hidden_conv=20, n_layers_conv=4,
                      n_layers_dense_lower=4, n_layers_dense_upper=2, n_scales=1, crop=None,
                      conv_impl='auto', **TRAINING_ESTIMATE)
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
    # 5,000 real MNIST digits (datasets.mnist5k_file): MNIST's network.
    'mnist5k': dict(IMAGE_DEFAULTS),
    # your own images (datasets.folder_images): every file resized to image_size, grey
    # (channels=1) or colour (channels=3); train.py --dataset folder:PATH sets folder.
    'folder': dict(IMAGE_DEFAULTS, folder=None, image_size=32, channels=1),
})
IMAGES = ('MNIST', 'CIFAR10', 'deadleaves', 'bark', 'digits', 'mnist5k', 'folder')
GAUSSIAN = ('swissroll',) + IMAGES
# Training defaults for this 2-core machine.
RUN_DEFAULTS = {
    'swissroll': dict(batch_size=512, lr=3e-3, lr_final=1e-5, max_batches=60000, ext_every_n=2000),
    'heartbeat': dict(batch_size=512, lr=3e-3, lr_final=1e-4, max_batches=40000, ext_every_n=4000),
    'MNIST': dict(batch_size=512, lr=1e-3, lr_final=None, max_batches=100000, ext_every_n=1000),
    'CIFAR10': dict(batch_size=200, lr=1e-3, lr_final=None, max_batches=100000, ext_every_n=1000),
    'bark': dict(batch_size=128, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=500),
    'deadleaves': dict(batch_size=100, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=250),
    'digits': dict(batch_size=100, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=500),
    'mnist5k': dict(batch_size=100, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=500),
    'folder': dict(batch_size=100, lr=1e-3, lr_final=None, max_batches=20000, ext_every_n=500),
}
# Model keys added after runs had been made, with the value that reproduces those runs:
# a checkpoint without the key loads as it was trained (beta_min: the released code's floor,
# model.BETA_MIN).
ADDED_KEYS = dict({'swissroll': dict(TRAINING_ESTIMATE, beta_min=1e-6, nonfinite_gradient='drop_step'),
                   'heartbeat': dict(TRAINING_ESTIMATE, init_gain=1.0, nonfinite_gradient='drop_step')},
                  **{name: dict(TRAINING_ESTIMATE, conv_impl='corrmm', tied_biases=True, feature_scaling=False,
                                nonfinite_gradient='drop_step') for name in IMAGES})

# Table 1 of the paper (docs/paper_and_code.md, section 5): K and K - L_null, bits per data
# vector (toys) or
# per pixel (images). MNIST was reported as a Parzen estimate instead (Table 2).
TABLE_1 = {'swissroll': (2.35, 6.45), 'heartbeat': (-2.414, 12.024), 'bark': (-0.55, 1.5),
           'deadleaves': (1.489, 3.536), 'CIFAR10': (5.4, 11.5)}


def k_unit(dataset):
    """The unit of K for a data set, as experiments.py reports it: per pixel for images, per
    data vector for the toys (a point of the Swiss roll, a heartbeat sequence)."""
    return 'bits/pixel' if dataset in IMAGES else 'bits/seq' if dataset == 'heartbeat' else 'bits'

# Where a "paper" run is not the paper: our choice for each key, with the reason. The
# paper gives no value where it says "not given". (key: (paper, reason))
# The paper's dead-leaves and bark network (Figure D.1) gives the structure, not the sizes.
FULLY_CONVOLUTIONAL_CHOICES = {
    'crop': ('not given', '32x32 random crops: four times cheaper steps; the network is fully convolutional'),
    'n_scales': ('not given', '4 scales: from 32x32 down to 4x4 on a crop'),
    'n_hidden_conv': ('not given', '32 channels: the widest that trains at about 2 steps per second here'),
    'n_layers_conv': ('not given', 'the released code\'s 4'),
    'n_hidden_dense_upper': ('not given', '64 units per pixel: the per-pixel layers are cheap'),
    'n_layers_dense_upper': ('not given', '3: two hidden per-pixel layers before the read-out'),
}
# The released code's step rule zeroes the gradient of a parameter whose gradient is not finite
# (code preset: nonfinite_gradient='zero_gradient'); the paper, trained with SFO, says nothing.
NONFINITE_CHOICE = ('not stated (the paper trained with SFO)', 'drop the whole step: no parameter and no '
                    'optimiser state moves on a minibatch whose gradient overflowed anywhere')
OUR_CHOICES = {
    'swissroll': {
        'nonfinite_gradient': NONFINITE_CHOICE,
        'n_hidden': ('16 RBF units', 'on this thin roll 16 units stay about 1 bit lower'),
        'expert': ("'constant' (plain normalised RBF)", 'each unit carries a local quadratic map, '
                   'which the mean needs to follow a thin roll'),
        'code_mu': ('False (Eq. 65)', 'Eq. 65 asks for values that grow like 1 / b_t and stalls '
                    'training at b_1 = 1e-7'),
        'beta_init': ('not given', 'logit(1 - A_t) evenly spaced: geometric noise at the start, '
                      'geometric signal at the end'),
        'beta_1': ('a small constant, not given', 'below the roll\'s variance (4.9e-7 after scaling), '
                   'since b_1 caps the bound'),
        'beta_min': ('not given (the code\'s floor is 1e-6)', 'lets the learned b_t go down to b_1'),
        'noise': ('not given', 'a thin roll as in Figure 1 (exact log likelihood 4.70 bits)'),
    },
    'heartbeat': {
        'nonfinite_gradient': NONFINITE_CHOICE,
        'n_hidden': ('50', '100 gives about 0.04 bits/seq more with the same training'),
        'readout': ("'per_step' (a read-out per step)", 'the temporal basis trains far faster at T = 2000'),
        'basis_warp': ('-', 'bumps evenly spaced in the log-odds of resampling, where the kernel '
                       'changes at an even pace'),
        'init_gain': ('not given', 'orthogonal x 4 keeps sigmoid gradients from shrinking 4x per layer; '
                      'gain 1 ended 0.28 bits/seq lower'),
        'p': ('0.5 in the equation table', '0.2 is what the paper\'s L_null (14.439 bits) implies'),
    },
    'images': {
        'beta_1': ('a small constant, not given', 'the harmonic base\'s own b_1 at T = 1000 (bark, T = 500, '
                   'keeps it)'),
        'tied_biases': ('not stated; Appendix D.2.1 speaks of convolutions', 'one bias per filter, as in '
                        'any convolution; the fully convolutional networks are evaluated on larger images '
                        'than their training crops, which per-position biases would not allow'),
        'feature_scaling': ('not stated; Figure D.1 joins the two lower paths as they are', 'no scaling, as '
                            'described: a constant factor on the inputs of a learned layer only changes its '
                            'initial scale'),
        'nonfinite_gradient': NONFINITE_CHOICE,
    },
    'deadleaves': dict(FULLY_CONVOLUTIONAL_CHOICES, image_size=(
        'not given (about 256 pixels in Figure 4)', '64x64: room for 4 scales and for a whole-image bound on '
        'four times the training crop; 256x256 costs 16 times more per image on two cores')),
    'bark': dict(FULLY_CONVOLUTIONAL_CHOICES, patch=('not given', '64x64 patches of the textures')),
}
OPTIMIZER_NOTE = ('optimizer', 'SFO', 'RMSProp (decay 0.9, max_scaling 1e5) as in the released code but '
                  'its max_scaling 1e10: SFO no longer installs')
AVERAGE_NOTE = ('ema', 'the last parameters', 'an exponential moving average of the parameters evaluates '
                'and samples (not in the paper or the released code); results.json keeps the last parameters\' K '
                'as without_ema')


def non_paper_choices(dataset, args, fidelity='paper', optimizer='rmsprop'):
    """[{'key', 'value', 'paper', 'reason'}] for each key of `args` (a paper- or fast-preset
    configuration) where the value is ours, not the paper's; the optimiser (the paper
    trained every model but CIFAR-10 with SFO); an average of the parameters, where the run
    keeps one (AVERAGE_NOTE). The fast preset adds its own (FAST_CHOICES)."""
    table = dict(OUR_CHOICES.get('images', {}) if dataset in IMAGES else {}, **OUR_CHOICES.get(dataset, {}))
    if fidelity == 'fast':
        table.update(FAST_CHOICES)
    out = [{'key': key, 'value': args[key], 'paper': paper, 'reason': reason}
           for key, (paper, reason) in sorted(table.items()) if key in args]
    if fidelity == 'fast':
        key, paper, reason = FAST_OPTIMIZER
        out.append({'key': key, 'value': optimizer, 'paper': paper, 'reason': reason})
    elif dataset != 'CIFAR10':
        key, paper, reason = OPTIMIZER_NOTE
        out.append({'key': key, 'value': optimizer, 'paper': paper, 'reason': reason})
    if args.get('ema'):
        key, paper, reason = AVERAGE_NOTE
        out.append({'key': key, 'value': args[key], 'paper': paper, 'reason': reason})
    return out


def choices_markdown():
    """OUR_CHOICES and the optimiser as the Markdown table of docs/paper_and_code.md,
    section 9 (tests/test_paper_and_code.py keeps the two equal): one row per data set
    (or 'images': every image set) and key, with the paper-preset value."""
    rows = ['| data set | key | our value | the paper | why |', '|---|---|---|---|---|']
    for group, table in OUR_CHOICES.items():
        configurations = [model_args(name, 'paper', {}) for name in (IMAGES if group == 'images' else [group])]
        for key, (paper, reason) in sorted(table.items()):
            value = ', '.join(sorted({repr(args[key]) for args in configurations}))
            rows.append('| {} | `{}` | `{}` | {} | {} |'.format(group, key, value, paper, reason))
    key, paper, reason = OPTIMIZER_NOTE
    rows.append('| all but CIFAR10 | `--{}` | `rmsprop` | {} | {} |'.format(key, paper, reason))
    return '\n'.join(rows) + '\n'


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


class Optional:
    """None, or what `rule` accepts."""

    def __init__(self, rule):
        self.rule = rule

    def accepts(self, v):
        return v is None or self.rule.accepts(v)

    def __str__(self):
        return str(self.rule) + ' or None'


class OneOf:
    def __init__(self, *choices):
        self.choices = choices

    def accepts(self, v):
        return any(v == c and type(v) is type(c) for c in self.choices)

    def __str__(self):
        return 'one of ' + ', '.join(repr(c) for c in self.choices)


class Folder:
    def accepts(self, v):
        return v is None or (isinstance(v, str) and os.path.isdir(v))

    def __str__(self):
        return 'an existing folder or None'


class Float32Probability(Real):
    """A number in (0, 1) that float32, the precision the model computes in, holds as
    neither 0 nor 1 (p = 1e-300 is 0 in float32, and its log, -inf, makes every bound NaN;
    with denormals flushed, as by default (backend.flush_denormals), so is 1e-40)."""

    def __init__(self):
        super().__init__(0, 1)

    def accepts(self, v):
        return super().accepts(v) and 0 < np.float32(v) < 1

    def __str__(self):
        return 'a number in (0, 1) that float32 holds as neither 0 nor 1 (about 1.2e-38 to 1 - 6e-8)'


NONFINITE = ('drop_step', 'zero_gradient')  # what a step does with a NaN or inf gradient (steprules.gradient_updates)
TRAIN_T = ('uniform', 'harmonic', 'adaptive', 'gradient')  # how training draws t (bound.training_steps)
BOOL = OneOf(True, False)
ARG_RULES = {
    # the diffusion and its schedule
    'T': Int(2), 'beta_init': OneOf('harmonic', 'geometric', 'logit'), 'beta_1': Real(0, 1),
    'beta_min': Real(0, 1, closed_lo=True), 'p': Float32Probability(),
    # presets (docs/paper_and_code.md, section 3)
    'learn_beta': BOOL, 'code_mu': BOOL, 'code_sigma': BOOL, 'kl_factor': OneOf('T-1', 'T'),
    'basis_width': OneOf('paper', 'code'), 't_per_minibatch': BOOL, 'nonlinearity': OneOf('paper', 'code'),
    'scale_nonlinearity': OneOf('after_sum', 'per_scale'), 'conv_path': BOOL, 'dense_path': BOOL,
    'dense_depth_from_conv': BOOL,
    'dequantisation': OneOf('paper', 'code'), 'norm_from_minibatch': BOOL, 'skip_last_step': BOOL,
    'tied_biases': BOOL, 'feature_scaling': BOOL, 'nonfinite_gradient': OneOf(*NONFINITE),
    # toy networks and data
    'n_hidden': Int(1), 'expert': OneOf('constant', 'linear', 'quadratic'), 'n_basis': Int(2),
    'n_layers': Int(1), 'readout': OneOf('basis', 'per_step'), 'basis_warp': OneOf('logit', 'linear'),
    'init_gain': Real(0), 'noise': Real(0), 'n_train': Int(1), 'n_eval': Int(2), 'n_final_eval': Optional(Int(2)),
    # image networks and data
    'n_temporal_basis': Int(2), 'n_hidden_dense_lower': Int(1), 'n_hidden_dense_lower_output': Int(1),
    'n_hidden_dense_upper': Int(1), 'n_hidden_conv': Int(1), 'n_layers_conv': Int(1),
    'n_layers_dense_lower': Int(1), 'n_layers_dense_upper': Int(1), 'n_scales': Int(1),
    'folder': Folder(), 'patch': Int(2), 'image_size': Int(2), 'crop': Optional(Int(2)), 'channels': OneOf(1, 3),
    'conv_impl': OneOf('auto', 'corrmm', 'winograd', 'im2col'),
    # how training estimates K (TRAINING_ESTIMATE)
    'train_t': OneOf(*TRAIN_T), 'train_t_uniform': Real(0, 1, closed_lo=True),
    'train_t_history': Int(1), 'ema': Optional(Real(0, 1)),
}


def check_model_args(args):
    """ValueError naming the first key whose value is outside what it accepts (ARG_RULES)."""
    for key, value in args.items():
        rule = ARG_RULES[key]
        if not rule.accepts(value):
            raise ValueError('--model-args {}={!r}: {} must be {}'.format(key, value, key, rule))
    if args.get('expert') and args['n_hidden'] > args['n_train']:
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
    elif fidelity == 'fast':  # binomial diffusion: only the training estimate differs
        args.update(FAST)
    unknown = set(overrides) - set(args)
    if unknown:
        raise KeyError('unknown --model-args key(s) {} for {}; valid: {}'.format(
            ', '.join(sorted(unknown)), dataset, ', '.join(sorted(args))))
    args.update(overrides)
    check_model_args(args)
    return args


def checkpoint_model_config(state):
    """The model configuration a checkpoint was trained with; keys added since take the
    value that reproduces older runs (ADDED_KEYS)."""
    dataset = state['config']['args']['dataset']
    return dict(ADDED_KEYS.get(dataset, {}), **state['config']['model'])
