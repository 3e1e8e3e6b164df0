"""Train a diffusion probabilistic model (Sohl-Dickstein et al. 2015).

    python train.py --dataset swissroll
    python train.py --dataset heartbeat --max-batches 2000
    python train.py --dataset deadleaves --fidelity code --max-batches 200
    python train.py --dataset folder:PATH
    python train.py --resume runs/<run> [--max-batches N]
    python train.py --convert-checkpoint runs/.../checkpoint.pkl

Each run writes into its own directory under --output-dir: log.jsonl (every
monitored value), progress.csv (the printed progress lines), checkpoint.npz, figures,
and results.json at the end.

A resumed run takes every setting from its checkpoint. Given again, --max-batches,
--max-epochs, --max-minutes, --ext-every-n, --lr, --lr-final and --data-path override
the stored value (the run says so); the settings that define the model and the data
order cannot change.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import argparse
import ast
import math
import os
import re
import shlex
import sys
import time

import numpy as np

import cli
import provenance
import rundirs

# Loaded at their first use, so that --help and usage errors answer without Theano.
bound = cli.lazy('bound')
datasets = cli.lazy('datasets')
evaluate = cli.lazy('evaluate')
experiments = cli.lazy('experiments')
E = cli.lazy('extensions')
figures = cli.lazy('figures')
memory = cli.lazy('memory')
parallel = cli.lazy('parallel')
presets = cli.lazy('presets')
streams = cli.lazy('streams')
training = cli.lazy('training')

# The choices of the command line, written out so that the parser needs no Theano (the
# tests check them against presets.MODEL_ARGS, presets.PRESETS and training.STEP_RULES).
DATASETS = ('swissroll', 'heartbeat', 'MNIST', 'CIFAR10', 'bark', 'deadleaves', 'digits', 'folder')
FOLDER = 'folder:'  # --dataset folder:PATH, your own images (datasets.folder_images)
FIDELITIES = ('code', 'fast', 'paper')
OPTIMIZERS = ('adam', 'rmsprop')

# Run settings and their defaults when a data set gives none (presets.RUN_DEFAULTS
# gives batch_size, lr, lr_final, max_batches and ext_every_n per data set).
DEFAULTS = {'fidelity': 'paper', 'model_args': {}, 'optimizer': 'rmsprop', 'seed': 0,
            'max_epochs': None, 'max_minutes': None, 'output_dir': 'runs', 'suffix': '',
            'data_path': None}
FIXED_ON_RESUME = ('dataset', 'fidelity', 'model_args', 'seed', 'batch_size', 'optimizer')
OVERRIDABLE = ('max_batches', 'max_epochs', 'max_minutes', 'ext_every_n', 'lr', 'lr_final', 'data_path')
NEW_RUN_ONLY = ('output_dir', 'suffix')
# What a checkpoint must hold to resume (training.require); settings it lacks beyond these
# take DEFAULTS.
NUMBER = (int, float)
RESUME_FIELDS = (('config.args', dict), ('config.model', dict), ('config.args.dataset', str),
                 ('config.args.fidelity', str), ('config.args.model_args', dict), ('config.args.seed', int),
                 ('config.args.batch_size', int), ('config.args.optimizer', str), ('config.args.lr', NUMBER),
                 ('config.args.lr_final', NUMBER + (type(None),)), ('config.args.max_batches', (int, type(None))),
                 ('config.args.ext_every_n', int), ('status.epochs_done', int), ('status.batch_in_epoch', int),
                 ('status.seed', int), ('status.wall_s', NUMBER), ('status.evaluations', list))


def parse_model_args(text):
    """'key=value,key=value' -> dict; values are Python literals (ast.literal_eval,
    never eval) or else plain strings."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(','))):
        if '=' not in item:
            raise ValueError('--model-args item {!r} is not key=value'.format(item))
        key, value = (s.strip() for s in item.split('=', 1))
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def model_args_type(text):
    """parse_model_args for argparse: its message, not argparse's generic one."""
    try:
        return parse_model_args(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def build_parser():
    """Every option defaults to None, so that the options given can be told apart (resume)."""
    per_set = ' (default: the data set\'s, presets.RUN_DEFAULTS)'
    p = cli.command_parser(__doc__)
    p.add_argument('--dataset', help='one of: ' + ', '.join(DATASETS[:-1]) + ' (any case; default swissroll), '
                   'or folder:PATH for the PNG/JPEG images under PATH')
    p.add_argument('--fidelity', choices=FIDELITIES,
                   help='paper (default): the paper\'s choices; code: the released code\'s '
                        '(docs/paper_and_code.md, section 3); fast: the paper\'s model and bound, '
                        'trained the fastest way measured here')
    p.add_argument('--model-args', type=model_args_type,
                   help='key=value,... overriding the preset\'s model arguments (default: none)')
    p.add_argument('--batch-size', type=int, help='examples per minibatch' + per_set)
    p.add_argument('--lr', type=float, help='initial learning rate' + per_set)
    p.add_argument('--lr-final', type=float,
                   help='decay the learning rate exponentially to this value over --max-batches; '
                        'without it, the released code\'s schedule' + per_set)
    p.add_argument('--optimizer', choices=OPTIMIZERS, help='default: rmsprop (adam with --fidelity fast)')
    p.add_argument('--seed', type=int, help='seed of the data order, the noise and the initial parameters '
                                            '(default: 0)')
    p.add_argument('--max-batches', type=int,
                   help='stop after this many minibatches, counted from the run\'s start' + per_set)
    p.add_argument('--max-epochs', type=int,
                   help='stop after this many passes over the training set (default: no limit)')
    p.add_argument('--max-minutes', type=float,
                   help='stop after this much training time, counted from the run\'s start (default: no limit)')
    p.add_argument('--ext-every-n', type=int, help='evaluate, print and checkpoint every N minibatches' + per_set)
    p.add_argument('--output-dir', help='folder in which the run makes its own directory (default: runs)')
    p.add_argument('--suffix', help='added to the run directory\'s name (default: none)')
    p.add_argument('--data-path', help='folder of data files (default: $FUEL_DATA_PATH)')
    p.add_argument('--resume', metavar='RUN_DIR',
                   help='continue the run in RUN_DIR (from its checkpoint.npz); a checkpoint file is taken too')
    p.add_argument('--resume_file', '--resume-file', dest='resume', help=argparse.SUPPRESS)  # the old names
    p.add_argument('--plot_before_training', '--plot-before-training', action='store_true',
                   help='evaluate the held-out bound once before the first minibatch')
    p.add_argument('--convert-checkpoint', metavar='OLD.pkl',
                   help='write the .npz form of an old pickle checkpoint beside it, and exit')
    p.add_argument('--overwrite', action='store_true',
                   help='let --convert-checkpoint replace an existing .npz, and --resume of a file other '
                        'than RUN_DIR/checkpoint.npz replace that one')
    return p


# ---------------------------------------------------------------- settings of a new or resumed run

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


def resumed_settings(given, saved):
    """The settings of a resumed run: the checkpoint's, with the OVERRIDABLE ones given
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
        if value == saved.get(key):
            continue
        if key in FIXED_ON_RESUME:
            cli.fail('{} cannot change when resuming (the run has {!r}): the model and the data '
                      'order depend on it; start a new run instead'.format(flag, saved.get(key)))
        overrides.append({'flag': flag, 'checkpoint': saved.get(key), 'given': value})
        settings[key] = value
    return settings, overrides


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


def lr_schedule(s, lr_start, iterations_done, n_train):
    """The learning-rate schedule of a run (extensions.LearningRateSchedule arguments).

    With --lr-final: an exponential decay from the current learning rate to lr_final over
    the minibatches still planned (--max-batches, else --max-epochs x minibatches per
    epoch), then held at lr_final; otherwise the released code's schedule. A new run plans
    from --lr; a resumed run keeps its stored schedule, and is re-planned from its current
    learning rate only when --lr-final is given again with another value. So extending a
    run with a larger --max-batches keeps the planned decay and holds lr_final after it.
    """
    if s['lr_final'] is None:
        return dict(E.RELEASED_SCHEDULE)
    total = s['max_batches'] or s['max_epochs'] * -(-n_train // s['batch_size'])
    return E.exponential_decay(lr_start, s['lr_final'], max(total - iterations_done, 1))


# ---------------------------------------------------------------- the run

def build_extensions(s, exp, run_dir, lr, plot_before_training, comm, average=None):
    """The extensions of a run: every process stops, schedules and evaluates (collectively);
    the writer process alone prints and writes files. With an average of the parameters,
    the monitor, the figures and the samples are the average's."""
    every = s['ext_every_n']
    max_s = s['max_minutes'] * 60 if s['max_minutes'] else None
    finish = E.FinishAfter(s['max_batches'], s['max_epochs'], max_s, -(-len(exp.train_x) // s['batch_size']))
    everywhere = [finish,
                  E.LearningRateSchedule(lr, **s['lr_schedule']),
                  E.HeldOutBound(exp, every_n_batches=every, before_training=plot_before_training, comm=comm,
                                 average=average),
                  E.NonFiniteGuard()]
    if not comm.is_writer:
        return everywhere
    checkpoint = os.path.join(run_dir, 'checkpoint.npz')
    return everywhere + [
        E.Plots(exp, run_dir, every_n_batches=every, average=average),
        E.SamplePlots(exp, run_dir, every_n_batches=every, average=average),
        E.Printing(every, finish, os.path.join(run_dir, 'progress.csv'), lr),
        E.JSONLog(os.path.join(run_dir, 'log.jsonl')),
        E.Checkpoint(checkpoint, every_n_batches=every, best_path=os.path.join(run_dir, 'best.npz'),
                     resume_hint=resume_command(run_dir)),
    ]


def final_evaluation(loop, exp, run_dir, average=None):
    """The bound on the held-out set (exp.final_examples of it, exp.final_draws stratified
    draws each; evaluate.heldout_report: the factor T - 1, and for a network trained on
    crops also held-out crops), the experiment's figures, and RUN_DIR/results.json, which lists
    where a paper-preset run is not the paper (presets.non_paper_choices). With an average
    of the parameters, all of it is the average's, and the bound of the last parameters
    themselves, on the monitor's examples, is beside it (without_ema). The bound is
    computed by every process; the writer alone writes."""
    x = exp.test_x[:exp.final_examples]
    print('The held-out bound on {} examples, {} stratified draws each ...'.format(len(x), exp.final_draws),
          flush=True)
    with training.averaged(average):
        r = evaluate.heldout_report(exp, x, exp.final_draws, seed=2, comm=loop.comm)
    if average is not None:
        raw = bound.heldout_bound(exp, exp.test_x[:exp.n_monitor], exp.monitor_draws, seed=2, comm=loop.comm)
        r['ema'] = average.rate
        r['without_ema'] = {k: raw[k] for k in ('K_bits', 'K_minus_Lnull_bits', 'stderr_bits', 'n_eval', 'n_t')}
    if not loop.comm.is_writer:
        return None
    with training.averaged(average):
        figures.experiment_figures(exp, run_dir, seed=loop.status['seed'])
    r.update(exp.reference_values())
    s = loop.status
    out = {'seed': s['seed'], 'iterations': s['iterations_done'], 'epochs': s['epochs_done'],
           'wall_s': round(s['wall_s'], 2), 'resumed_from': s['resumed_from']}
    out.update(loop.config['results'], **r)
    if out['fidelity'] in ('paper', 'fast'):
        out['not_the_paper'] = presets.non_paper_choices(exp.dataset, exp.args, out['fidelity'],
                                                         loop.config['args']['optimizer'])
    out['sessions'] = loop.config['sessions']
    rundirs.write_json(os.path.join(run_dir, 'results.json'), out)
    return out


def print_results(results, run_dir):
    print('Held-out bound: K = {K_bits:.3f} +- {stderr_bits:.3f} {unit}, K - L_null = '
          '{K_minus_Lnull_bits:.3f} (n_eval {n_eval}, {n_t} stratified draws each)'.format(**results))
    if 'crops' in results:
        print('On held-out {crop}x{crop} crops: K = {K_bits:.3f} +- {stderr_bits:.3f}, K - L_null = '
              '{K_minus_Lnull_bits:.3f}'.format(**results['crops']))
    if 'without_ema' in results:
        print('Those are the parameters\' average (ema {}); the last parameters themselves give K = {K_bits:.3f} '
              '+- {stderr_bits:.3f} (n_eval {n_eval}, {n_t} draws each)'.format(results['ema'], **results['without_ema']))
    references = [('paper', 'paper_K_bits'), ('exact log likelihood', 'exact_ll_bits'),
                  ('true log likelihood', 'true_ll_bits'), ('best factorised kernel', 'factorised_optimum_K_bits')]
    known = ['{} {:.3f}'.format(name, results[key]) for name, key in references if key in results]
    if known:
        print('Compare: ' + ', '.join(known))
    print('Results written to {}'.format(os.path.join(run_dir, 'results.json')))


def settings_and_experiment(args):
    """(settings, checkpoint or None, overrides, experiment): everything checked, nothing
    written; a user error is one line and exit 2."""
    given = {k: v for k, v in vars(args).items()
             if k not in ('resume', 'plot_before_training', 'convert_checkpoint', 'overwrite')}
    checkpoint, overrides = None, []
    if args.resume:
        try:
            checkpoint = training.load_checkpoint(args.resume)
            check_resumable(checkpoint, args.resume)
        except ValueError as e:
            cli.fail(str(e))
        s, overrides = resumed_settings(given, dict(DEFAULTS, **checkpoint['config']['args']))
    else:
        s = new_run_settings(given)
    check_settings(s)
    try:
        config = (presets.checkpoint_model_config(checkpoint) if checkpoint else
                  presets.model_args(s['dataset'], s['fidelity'], s['model_args']))
        too_large = memory.check_training(s['dataset'], s['fidelity'], config, s['batch_size'])
        if too_large:
            cli.fail(too_large)
        exp = experiments.build(s['dataset'], config, s['seed'], s['data_path'])
        if checkpoint:  # before anything is compiled (the main loop loads them again, with the rest)
            experiments.load_parameters(exp, checkpoint, args.resume)
    except (ValueError, KeyError) as e:  # a bad --model-args value, a missing data file
        cli.fail(str(e).strip('"\''))
    return s, checkpoint, overrides, exp


def check_resumable(checkpoint, path):
    """ValueError (one line) unless the checkpoint holds what a resumed run needs."""
    training.require(checkpoint, path, RESUME_FIELDS)
    saved = checkpoint['config']['args']
    for key, known in (('dataset', presets.MODEL_ARGS), ('fidelity', presets.PRESETS),
                       ('optimizer', training.STEP_RULES)):
        if saved[key] not in known:
            raise ValueError('{} is not a checkpoint of this project, or is damaged: its {} is {!r}'.format(
                path, key, saved[key]))
    missing = set(presets.model_args(saved['dataset'], saved['fidelity'], {})) - set(
        presets.checkpoint_model_config(checkpoint))
    if missing:
        raise ValueError('{} is not a complete checkpoint of this project: its model lacks {}'.format(
            path, ', '.join(sorted(missing))))


def resumed_log(run_dir, checkpoint):
    """Check RUN_DIR/log.jsonl before a resume (JSONLog cuts it back to the checkpoint): a
    checkpoint alone in its folder starts a new log, said in one line; a log shorter than
    the checkpoint's records is another run's, one line and exit 2."""
    log, status = os.path.join(run_dir, 'log.jsonl'), checkpoint['status']
    if not os.path.exists(log):
        if status.get('log_bytes') != 0:
            print('No log.jsonl beside the checkpoint: a new one starts at minibatch {} (the records before '
                  'it are not in {}).'.format(status['iterations_done'], run_dir), file=sys.stderr)
        status['log_bytes'] = 0
    elif status.get('log_bytes') and os.path.getsize(log) < status['log_bytes']:
        cli.fail('{} has {} bytes and the checkpoint expects at least {}: it is not this run\'s log; move it '
                  'away to start a new log at minibatch {}'.format(log, os.path.getsize(log), status['log_bytes'],
                                                                  status['iterations_done']))


def run_directory(s, args, checkpoint, overrides, comm):
    """The run's directory: the checkpoint's for a resumed run; else made by the writer."""
    if checkpoint:
        run_dir = os.path.dirname(os.path.abspath(args.resume))
        target = os.path.join(run_dir, 'checkpoint.npz')
        if os.path.abspath(args.resume) != target and os.path.exists(target) and not args.overwrite:
            cli.fail('resuming {} would replace {} (and cut log.jsonl back to {} minibatches): add --overwrite, '
                      'or copy it into a folder of its own'.format(args.resume, target,
                                                                 checkpoint['status']['iterations_done']))
        if comm.is_writer:
            resumed_log(run_dir, checkpoint)
        print('Resuming {} from {} ({} minibatches done).'.format(
            s['dataset'], args.resume, checkpoint['status']['iterations_done']))
        for o in overrides:
            print('{flag} {given} replaces the checkpoint\'s {checkpoint!r}'.format(**o))
        return run_dir
    if not comm.is_writer:
        return None
    try:
        os.makedirs(s['output_dir'], exist_ok=True)
        return rundirs.make_run_dir(s['output_dir'], 'diffusion', run_name(s), s['suffix'])
    except OSError as e:
        cli.fail('--output-dir {}: {}'.format(s['output_dir'], e.strerror or e))


def main_loop(s, exp, checkpoint, overrides, step_rule, comm, average=None):
    """The main loop of the run, its state loaded from the checkpoint if there is one, and
    the learning-rate schedule planned (lr_schedule). The checkpoint holds the parameters,
    the optimiser's state, the step sampler's (an adaptive proposal) and the average's."""
    print('Compiling the training function (the first run takes a minute or two) ...', flush=True)
    start = time.time()
    step, n_nonfinite = exp.compile_train(step_rule, comm, average)
    print('Compiled in {:.1f} s.'.format(time.time() - start), flush=True)
    state = exp.params + step_rule.state + list(exp.steps.state) + (average.state if average else [])
    shared = {p.name: p for p in state}
    shared.update({'optimizer.lr': step_rule.lr, 'optimizer.n_nonfinite': n_nonfinite})
    stream = streams.DataStream(streams.ArrayDataset(features=exp.train_x),
                                streams.ShuffledScheme(len(exp.train_x), s['batch_size'], s['seed']))
    previous = checkpoint['config'] if checkpoint else {}
    done = checkpoint['status']['iterations_done'] if checkpoint else 0
    for o in overrides:
        o['iteration'] = done
    session = {'from_iteration': done, 'processes': comm.size, 'mpi': comm.library(),
               'environment': provenance.environment()}
    config = {'args': s, 'model': exp.args, 'overrides': previous.get('overrides', []) + overrides,
              'sessions': previous.get('sessions', []) + [session],
              'results': {'dataset': s['dataset'], 'fidelity': s['fidelity'], 'T': exp.args['T']}}
    loop = training.MainLoop(step, stream, shared, [], s['seed'], config, comm)
    if checkpoint:
        try:
            loop.load_state_dict(checkpoint)
        except ValueError as e:
            cli.fail('the checkpoint does not fit this model: {}'.format(e))
        loop.status['resumed_from'] = done
    flags = {o['flag'] for o in overrides}
    if '--lr' in flags:
        step_rule.lr.set_value(np.asarray(s['lr'], dtype=step_rule.lr.dtype))
    if 'lr_schedule' not in s:  # a new run, or a checkpoint of the old format: the run's plan
        s['lr_schedule'] = lr_schedule(s, s['lr'], 0, len(exp.train_x))
    elif '--lr-final' in flags:  # re-planned from here
        s['lr_schedule'] = lr_schedule(s, float(step_rule.lr.get_value()), done, len(exp.train_x))
    return loop


def lock_run_directory(run_dir, comm):
    """The writer's lock on the run directory (rundirs.RunLock), None on the other processes;
    one line and exit 2 while another process holds it."""
    if not comm.is_writer:
        return None
    lock = rundirs.RunLock(run_dir)
    try:
        previous = lock.acquire()
    except ValueError as e:
        cli.fail(str(e))
    if previous and previous.get('pid') != os.getpid():
        print('{} of process {} on {}, which no longer runs, is taken over.'.format(
            lock.path, previous.get('pid', '?'), previous.get('host', '?')), file=sys.stderr)
    return lock


def kept(run_dir):
    """What a stopped run leaves: 'kept: RUN_DIR/checkpoint.npz (N minibatches); resume
    with: python train.py --resume RUN_DIR', or that there is no checkpoint."""
    path = os.path.join(run_dir, 'checkpoint.npz') if run_dir else None
    try:
        done = training.load_checkpoint(path)['status']['iterations_done'] if path else None
    except ValueError:
        done = None
    if done is None:
        return 'no checkpoint was written'
    return 'kept: {} ({} minibatches); resume with: {}'.format(path, done, resume_command(run_dir))


def resume_command(run_dir):
    """The command that resumes the run in run_dir."""
    return 'python train.py --resume {}'.format(shlex.quote(run_dir))


def run(args, comm):
    """Set up, train and evaluate; a signal outside the minibatches, an error writing the
    run directory and a run gone non-finite each end in one line saying what was kept."""
    run_dir = lock = None
    try:
        s, checkpoint, overrides, exp = settings_and_experiment(args)
        run_dir = run_directory(s, args, checkpoint, overrides, comm)
        lock = lock_run_directory(run_dir, comm)
        return train_and_evaluate(s, args, checkpoint, overrides, exp, run_dir, comm)
    except training.Interrupted as e:
        if comm.is_writer:
            print('train.py: stopped by {}; {}'.format(e, kept(run_dir)), file=sys.stderr)
        sys.exit(parallel.INTERRUPTED)
    except OSError as e:
        if run_dir is None:
            raise
        cli.fail('cannot write {}: {}; {}'.format(e.filename or run_dir, e.strerror or e, kept(run_dir)))
    finally:
        if lock:
            lock.release()
        if not args.resume and run_dir and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)  # a new run stopped before it wrote anything


def train_and_evaluate(s, args, checkpoint, overrides, exp, run_dir, comm):
    if comm.size > 1:
        print('{} processes; each takes its share of every minibatch of {}'.format(comm.size, s['batch_size']))
    print('Run directory: {}'.format(run_dir), flush=True)
    step_rule = training.step_rule(s['optimizer'], s['lr'], presets.STEP_RULE_ARGS[s['fidelity']])
    average = training.ParameterAverage(exp.params, exp.args['ema']) if exp.args.get('ema') else None
    loop = main_loop(s, exp, checkpoint, overrides, step_rule, comm, average)
    loop.extensions = build_extensions(s, exp, run_dir, step_rule.lr, args.plot_before_training, comm, average)
    loop.run()
    if loop.interrupted:
        sys.exit(parallel.INTERRUPTED)
    if loop.nonfinite:
        if comm.is_writer:
            print('train.py: error: the run went non-finite: {}; {} (try a lower --lr than {:g}, or other '
                  '--model-args)'.format(loop.nonfinite, kept(run_dir), s['lr']), file=sys.stderr)
        sys.exit(parallel.NONFINITE)
    results = final_evaluation(loop, exp, run_dir, average)
    if results:
        print_results(results, run_dir)
        if not math.isfinite(results['K_bits']):
            print('train.py: error: the held-out bound is not a number (null in {}): the model gives no finite '
                  'bound; check --model-args and --lr'.format(os.path.join(run_dir, 'results.json')),
                  file=sys.stderr)
            sys.exit(parallel.NONFINITE)
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag, value, what in (('--resume', args.resume, 'the run directory or the checkpoint\'s file'),
                              ('--convert-checkpoint', args.convert_checkpoint, 'the checkpoint\'s file')):
        if value is not None and not value.strip():
            cli.fail('{} is empty: give {}'.format(flag, what))
    if args.resume:
        args.resume = training.checkpoint_in(args.resume)
    if args.convert_checkpoint:
        try:
            print(training.convert_checkpoint(args.convert_checkpoint, args.overwrite))
        except ValueError as e:
            cli.fail(str(e))
        return None
    with parallel.abort_on_error() as comm, training.signals_raise():
        if not comm.is_writer:  # one writer: process 0 prints and writes
            sys.stdout = open(os.devnull, 'w')
        return run(args, comm)


if __name__ == '__main__':
    main()
