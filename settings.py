"""The settings of a training run, without Theano: a new run's from the command line and
the data set's defaults, a resumed run's from its checkpoint (with the flags that may
change), and their checks; one line and exit 2 for a user's error."""
import math
import os
import re
import shlex

import checkpoints
import cli
import datasets
import presets

FOLDER = 'folder:'  # --dataset folder:PATH, your own images (datasets.folder_images)

# Run settings and their defaults when a data set gives none (presets.RUN_DEFAULTS
# gives batch_size, lr, lr_final, max_batches and ext_every_n per data set).
DEFAULTS = {'fidelity': 'paper', 'model_args': {}, 'optimizer': 'rmsprop', 'seed': 0,
            'max_epochs': None, 'max_minutes': None, 'output_dir': 'runs', 'suffix': '',
            'data_path': None}
FIXED_ON_RESUME = ('dataset', 'fidelity', 'seed', 'batch_size', 'optimizer')
OVERRIDABLE = ('max_batches', 'max_epochs', 'max_minutes', 'ext_every_n', 'lr', 'lr_final', 'data_path')
NEW_RUN_ONLY = ('output_dir', 'suffix')
# --model-args is fixed on resume too, but for this key: an average of the parameters
# (steprules.ParameterAverage) may begin at a resume, from the parameters loaded, or go on
# at another rate (resumed_model_args).
RESUMABLE_MODEL_ARG = 'ema'
# What a checkpoint must hold to resume (checkpoints.require); settings it lacks beyond these
# take DEFAULTS.
NUMBER = (int, float)
RESUME_FIELDS = (('config.args', dict), ('config.model', dict), ('config.args.dataset', str),
                 ('config.args.fidelity', str), ('config.args.model_args', dict), ('config.args.seed', int),
                 ('config.args.batch_size', int), ('config.args.optimizer', str), ('config.args.lr', NUMBER),
                 ('config.args.lr_final', NUMBER + (type(None),)), ('config.args.max_batches', (int, type(None))),
                 ('config.args.ext_every_n', int), ('status.epochs_done', int), ('status.batch_in_epoch', int),
                 ('status.seed', int), ('status.wall_s', NUMBER), ('status.evaluations', list))


def new_run_settings(given):
    """The settings of a new run: what was given, then the data set's defaults, then DEFAULTS.
    An explicit --max-epochs drops the data set's default --max-batches (never an explicit one)."""
    if given.get('dataset') is None:
        given['dataset'] = 'swissroll'
    if given['dataset'].lower().startswith(FOLDER):
        given = folder_settings(given)
    try:
        dataset = datasets.canonical_name(given['dataset'], tuple(presets.MODEL_ARGS))
    except ValueError as e:
        cli.fail(str(e).replace('data set', '--dataset'))
    defaults = dict(DEFAULTS, **presets.RUN_DEFAULTS[dataset])
    if given.get('fidelity') == 'fast':
        defaults.update(presets.FAST_RUN_SETTINGS)
    if given.get('max_epochs') is not None and given.get('max_batches') is None:
        defaults['max_batches'] = None
    settings = {k: v if v is not None else defaults.get(k) for k, v in given.items()}
    settings['dataset'] = dataset
    return settings


def folder_settings(given):
    """--dataset folder:PATH -> --dataset folder with the absolute PATH in --model-args,
    where the checkpoint keeps it for a resumed run."""
    path = given['dataset'][len(FOLDER):]
    folder = os.path.abspath(os.path.expanduser(path))
    if not path or not os.path.isdir(folder):
        cli.fail('--dataset {}: no such folder; give a folder of PNG/JPEG images'.format(given['dataset']))
    return dict(given, dataset='folder', model_args=dict(given.get('model_args') or {}, folder=folder))


def run_name(s):
    """The data set's part of a run directory's name; folder-<the folder's name, made safe>
    for your own images."""
    folder = s['model_args'].get('folder') if s['dataset'] == 'folder' else None
    if not folder:
        return s['dataset']
    return 'folder-' + (re.sub(r'[^A-Za-z0-9.-]+', '-', os.path.basename(folder)).strip('-.') or 'images')


def resumed_settings(given, saved, model):
    """The settings of a resumed run: the checkpoint's (`saved`; `model`, its model
    configuration), with the OVERRIDABLE ones and --model-args RESUMABLE_MODEL_ARG given
    again replacing them; returns (settings, list of overrides). A FIXED_ON_RESUME setting
    given with another value, or a NEW_RUN_ONLY one, is a user error."""
    settings, overrides = dict(saved), []
    for key, value in given.items():
        if value is None or key in ('resume', 'plot_before_training', 'convert_checkpoint', 'overwrite'):
            continue
        flag = '--' + key.replace('_', '-')
        if key in NEW_RUN_ONLY:
            cli.fail('{} cannot be used with --resume: a resumed run continues in its own '
                      'directory'.format(flag))
        if key == 'dataset':
            try:
                value = datasets.canonical_name(value, tuple(presets.MODEL_ARGS))
            except ValueError:
                pass  # reported as a change of --dataset below
        if key == 'model_args':
            value = resumed_model_args(value, model)
            if value:
                overrides.append({'flag': flag, 'checkpoint': {k: model.get(k) for k in value}, 'given': value})
                settings[key] = dict(saved[key], **value)
            continue
        if value == saved.get(key):
            continue
        if key in FIXED_ON_RESUME:
            cli.fail('{} cannot change when resuming (the run has {!r}): the model and the data '
                      'order depend on it; start a new run instead'.format(flag, saved.get(key)))
        overrides.append({'flag': flag, 'checkpoint': saved.get(key), 'given': value})
        settings[key] = value
    return settings, overrides


def resumed_model_args(given, model):
    """The --model-args given to a resumed run that differ from its model configuration
    `model`: RESUMABLE_MODEL_ARG alone, or none; another key is a user error."""
    changed = {k: v for k, v in given.items() if v != model.get(k)}
    others = sorted(set(changed) - {RESUMABLE_MODEL_ARG})
    if others:
        cli.fail('--model-args {} cannot change when resuming (the run has {}): only {} may change; start a new '
                  'run instead'.format(', '.join(others), ', '.join('{}={!r}'.format(k, model.get(k)) for k in others),
                                       RESUMABLE_MODEL_ARG))
    try:
        presets.check_model_args(changed)
    except ValueError as e:
        cli.fail(str(e))
    return changed


def resumed_model_config(checkpoint, s):
    """The model configuration of a resumed run: the checkpoint's, with the run's
    --model-args RESUMABLE_MODEL_ARG (given at this resume or an earlier one)."""
    config = presets.checkpoint_model_config(checkpoint)
    if RESUMABLE_MODEL_ARG in s['model_args']:
        config[RESUMABLE_MODEL_ARG] = s['model_args'][RESUMABLE_MODEL_ARG]
    return config


def check_settings(s):
    """One-line error and exit 2 for a flag outside its range (before anything is written)."""
    rules = [('batch_size', 'an integer >= 1', lambda v: v >= 1),
             ('lr', 'a finite number > 0', lambda v: math.isfinite(v) and v > 0),
             ('lr_final', 'a finite number > 0 and at most --lr',
              lambda v: math.isfinite(v) and 0 < v <= s['lr']),
             ('max_batches', 'an integer >= 1', lambda v: v >= 1),
             ('max_epochs', 'an integer >= 1', lambda v: v >= 1),
             ('max_minutes', 'a finite number > 0', lambda v: math.isfinite(v) and v > 0),
             ('ext_every_n', 'an integer >= 1', lambda v: v >= 1)]
    for key, allowed, ok in rules:
        if s.get(key) is not None and not ok(s[key]):
            cli.fail('--{} {}: must be {}'.format(key.replace('_', '-'), s[key], allowed))
    cli.check_seed(s['seed'])
    if s['suffix'] and os.sep in s['suffix']:
        cli.fail('--suffix {!r}: must not contain {!r}'.format(s['suffix'], os.sep))
    if s['data_path'] and os.path.exists(s['data_path']) and not os.path.isdir(s['data_path']):
        cli.fail('--data-path {}: is a file, not a folder'.format(s['data_path']))


def check_batch_size(s, n_train, given):
    """A --batch-size larger than the training set of n_train examples (each minibatch would
    be the whole set, each epoch one minibatch): one-line error and exit 2 when the user gave
    it (`given`); the data set's default is cut down to n_train, said in one line."""
    if s['batch_size'] <= n_train:
        return
    if given:
        cli.fail('--batch-size {}: the training set has {} examples; give at most {}'.format(
            s['batch_size'], n_train, n_train))
    print('The training set has {} examples, fewer than the default --batch-size {}: minibatches of {}.'.format(
        n_train, s['batch_size'], n_train))
    s['batch_size'] = n_train


def check_resumable(checkpoint, path):
    """ValueError (one line) unless the checkpoint holds what a resumed run needs."""
    if checkpoint['status'].get(checkpoints.PARAMETERS_ONLY):
        raise ValueError('{} holds the parameters only (a released model without the optimiser\'s state): it cannot '
                         'be resumed; train again with: {}'.format(path, retrain_command(checkpoint)))
    checkpoints.require(checkpoint, path, RESUME_FIELDS)
    saved = checkpoint['config']['args']
    for key, known in (('dataset', presets.MODEL_ARGS), ('fidelity', presets.PRESETS),
                       ('optimizer', presets.OPTIMIZERS)):
        if saved[key] not in known:
            raise ValueError('{} is not a checkpoint of this project, or is damaged: its {} is {!r}'.format(
                path, key, saved[key]))
    missing = set(presets.model_args(saved['dataset'], saved['fidelity'], {})) - set(
        presets.checkpoint_model_config(checkpoint))
    if missing:
        raise ValueError('{} is not a complete checkpoint of this project: its model lacks {}'.format(
            path, ', '.join(sorted(missing))))


def retrain_command(checkpoint):
    """The command of the checkpoint's first training session (provenance.environment), or
    one made from its data set and preset."""
    config = checkpoint['config']
    recorded = [s.get('environment', {}).get('command') for s in config.get('sessions', [])]
    if recorded and recorded[0]:
        return recorded[0]
    return train_command(dict({'dataset': 'DATASET', 'fidelity': 'paper'}, **config.get('args', {})))


def train_command(args):
    """A train.py command line that makes a run, from its checkpoint's configuration (for
    runs that did not record their own command line)."""
    parts = ['python', 'train.py', '--dataset', args['dataset'], '--fidelity', args['fidelity']]
    if args.get('model_args'):
        pairs = sorted(args['model_args'].items())
        parts += ['--model-args', ','.join('{}={!r}'.format(k, v) for k, v in pairs)]
    for key in ('batch_size', 'lr', 'optimizer', 'seed', 'max_batches', 'max_epochs', 'max_minutes'):
        if args.get(key) is not None:
            parts += ['--' + key.replace('_', '-'), str(args[key])]
    return ' '.join(shlex.quote(p) for p in parts)


def resume_command(run_dir):
    """The command that resumes the run in run_dir."""
    return 'python train.py --resume {}'.format(shlex.quote(run_dir))
