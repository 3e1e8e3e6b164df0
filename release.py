"""Released models: a training run's checkpoint, log and K curve copied into models/NAME, with a
README that says how they were made, so that a fresh clone can evaluate, sample and resume.

    python release.py runs/<run> models/deadleaves

copies checkpoint.npz (parameters and optimiser state, what an exact --resume needs),
log.jsonl, progress.csv and results.json (when the run has ended), draws the K curve
(heldout_bound.png, with the paper's value) and, for the Swiss roll and the heartbeat, the
data set's own figure from the checkpoint (figures.DATASET_FIGURES), and writes
models/NAME/README.md: each session of the run (its command, machine, instruction set,
minibatches and training minutes), the totals in minibatches and core-hours, the held-out
bound, and the size and sha256 of every file. Files that evaluate.py and sampler.py wrote
into models/NAME are listed too. Running it again on the same run (or on
models/NAME itself, after a resume there) brings the folder up to date.

    python release.py runs/<run> models/mnist5k --parameters-only

keeps, for a network whose optimiser's state would make the folder large, only what
evaluate.py and sampler.py load (the parameters, and their average where the run kept one)
and leaves log.jsonl out: the folder evaluates and samples but cannot be resumed, and its
README gives the command that trains it again.
"""
import argparse
import csv
import hashlib
import json
import os
import shutil
import time

import checkpoints
import cli
import presets
import settings

RUN_FILES = ('checkpoint.npz', 'log.jsonl', 'progress.csv', 'results.json')


def sha256(path):
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def progress_rows(path):
    """progress.csv as a list of (iteration, wall_s)."""
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return [(int(r['iteration']), float(r['wall_s'])) for r in csv.DictReader(f)]


def wall_at(rows, iteration):
    """Training seconds at the last progress row at or before `iteration` (0 before any)."""
    return max((w for i, w in rows if i <= iteration), default=0.0)


def session_cores(session):
    """Cores a session trained on: processes x the threads of each (OpenBLAS's count, which
    follows the process's CPU affinity; else OMP_NUM_THREADS; else 1)."""
    env = session['environment']
    threads = env.get('openblas_threads') or env.get('OMP_NUM_THREADS') or 1
    return session.get('processes', 1) * int(threads)


def sessions(meta, rows):
    """One dict per session of the run: from and to minibatch, training minutes, cores, the
    machine and the command line."""
    done, total_s = meta['status']['iterations_done'], meta['status'].get('wall_s', 0.0)
    recorded = meta['config'].get('sessions', [])
    out = []
    for k, s in enumerate(recorded):
        to = recorded[k + 1]['from_iteration'] if k + 1 < len(recorded) else done
        end_s = wall_at(rows, to) if k + 1 < len(recorded) else total_s
        env = s['environment']
        out.append({'from': s['from_iteration'], 'to': to, 'minutes': (end_s - wall_at(rows, s['from_iteration'])) / 60,
                    'cores': session_cores(s), 'cpu': env.get('cpu'), 'isa': env.get('isa'),
                    'commit': (env.get('git_commit') or '')[:10], 'command': env.get('command')})
    return out


def latest_K(meta):
    """The last monitored held-out bound (iteration, K bits, stderr bits), or None."""
    records = [e for e in meta['status'].get('evaluations', []) if e.get('heldout_K_bits') is not None]
    if not records:
        return None
    e = records[-1]
    return e['iteration'], e['heldout_K_bits'], e.get('heldout_stderr_bits')


def copy_run(run_dir, model_dir, names=RUN_FILES):
    """Copy the files `names` that the run has from run_dir into model_dir (nothing when they are the same folder)."""
    os.makedirs(model_dir, exist_ok=True)
    if os.path.samefile(run_dir, model_dir):
        return
    for name in names:
        source = os.path.join(run_dir, name)
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(model_dir, name) + '.part')
            os.replace(os.path.join(model_dir, name) + '.part', os.path.join(model_dir, name))


def parameter_names(path):
    """The shared variables of the checkpoint `path` that evaluate.py and sampler.py load
    (experiments.load_parameters): the parameters, and their average where the run kept one
    (builds the model; loads Theano)."""
    import experiments
    import steprules
    exp = experiments.from_checkpoint(path)
    names = [p.name for p in exp.params]
    return names + ([steprules.AVERAGE_PREFIX + name for name in names] if exp.args.get('ema') else [])


def keep_parameters(path):
    """Rewrite the checkpoint `path` with its parameters only (checkpoints.parameters_only)."""
    state = checkpoints.load_checkpoint(path)
    checkpoints.save_checkpoint(path, checkpoints.parameters_only(state, parameter_names(path)))


def file_table(model_dir):
    """Markdown rows: every file of the folder but README.md, its size and sha256."""
    rows = ['| file | size | sha256 |', '|---|---|---|']
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if name != 'README.md' and os.path.isfile(path):
            rows.append('| {} | {:,} bytes | `{}` |'.format(name, os.path.getsize(path), sha256(path)))
    return rows


def session_table(runs):
    """Markdown rows of the sessions."""
    rows = ['| session | minibatches | training minutes | cores | machine | commit | command |',
            '|---|---|---|---|---|---|---|']
    for k, s in enumerate(runs, 1):
        rows.append('| {} | {:,} to {:,} | {:.1f} | {} | {} ({}) | {} | `{}` |'.format(
            k, s['from'], s['to'], s['minutes'], s['cores'], s['cpu'], s['isa'], s['commit'], s['command']))
    return rows


def json_in(model_dir, name):
    """The JSON file `name` of the folder, or None where it is not there."""
    path = os.path.join(model_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluation_line(model_dir, unit):
    """What evaluate.py wrote into the folder (evaluation_test.json), as one README line; K in `unit`."""
    r = json_in(model_dir, 'evaluation_test.json')
    if r is None:
        return '`evaluate.py` has not been run on this checkpoint yet.'
    b = r['bound']
    return ('`python evaluate.py models/{} --n-t {}` after minibatch {:,}: K = {:.3f} +- {:.3f} {} '
            '({} test examples, {} draws of t each; evaluation_test.json).').format(
        os.path.basename(os.path.normpath(model_dir)), b['n_t'], r['iterations'], b['K_bits'], b['stderr_bits'],
        unit, b['n_eval'], b['n_t'])


def results_line(model_dir, unit):
    """The held-out bound of train.py's final evaluation (results.json), as one README line; K in `unit`."""
    r = json_in(model_dir, 'results.json')
    if r is None:
        return 'The run has not ended: no final bound (results.json) yet.'
    return ('Final held-out bound of the last session (train.py, results.json): K = {:.3f} +- {:.3f} {} '
            '({} test examples, {} draws of t each, at minibatch {:,}).').format(
        r['K_bits'], r['stderr_bits'], unit, r['n_eval'], r['n_t'], r['iterations'])


def readme(name, model_dir, meta, rows, figure=None):
    """The folder's README.md text; figure: (file name, figures.py function) of the data set's
    own figure, where release drew one."""
    runs = sessions(meta, rows)
    status, args = meta['status'], meta['config'].get('args', {})
    parameters_only = status.get(checkpoints.PARAMETERS_ONLY, False)
    dataset = args.get('dataset', name)
    core_hours = sum(s['minutes'] * s['cores'] for s in runs) / 60
    last = latest_K(meta)
    paper, unit = presets.TABLE_1.get(dataset, (None,))[0], presets.k_unit(dataset)
    changed = ','.join('{}={}'.format(k, v) for k, v in sorted(args.get('model_args', {}).items()))
    lines = ['# {}: a released model'.format(name), '',
             'The {} model of the `{}` preset{}, trained by `train.py`; made by `python release.py` on {}.'.format(
                 dataset, args.get('fidelity'), ' with `--model-args {}`'.format(changed) if changed else '',
                 time.strftime('%Y-%m-%d')), '',
             '- Minibatches: {:,} ({} session(s), {:.2f} core-hours of training, {:.1f} training minutes).'.format(
                 status['iterations_done'], len(runs), core_hours, status.get('wall_s', 0.0) / 60)]
    lines += ['- Widened by `python widen.py` from {checkpoint} to {given} channels at minibatch {iteration:,}: the '
              'sessions before trained the narrower network.'.format(**o)
              for o in meta['config'].get('overrides', []) if o['flag'].startswith('widen.py')]
    if last:
        lines.append('- Monitored held-out bound at minibatch {:,}: K = {:.3f} +- {:.3f} {}{}.'.format(
            last[0], last[1], last[2] or float('nan'), unit,
            ' (paper, Table 1: {})'.format(paper) if paper else ''))
    lines += ['- ' + results_line(model_dir, unit), '- ' + evaluation_line(model_dir, unit)]
    if os.path.exists(os.path.join(model_dir, 'sample_paper.png')):
        lines.append('- Samples beside training images in the layout of the paper\'s Figure 4: '
                     '[sample_paper.png](sample_paper.png) (`python sampler.py models/{} --n 36 --output-dir OUT`, '
                     'its OUT/sample_paper.png).'.format(name))
    if figure:
        lines.append('- [{0}]({0}): the data set\'s own figure, as train.py draws it at the end of a run, drawn '
                     'from the checkpoint by `python release.py` (figures.{1}).'.format(*figure))
    lines += ['', '[heldout_bound.png](heldout_bound.png): the monitored K against minibatches and training hours{}.'
              .format(', the paper\'s value dashed' if paper else ' (Table 1 has no value for these data)'), '',
              'Evaluate, sample{} (from the repository\'s root):'.format('' if parameters_only else ', resume'), '',
              '    python evaluate.py models/{} --n-t 10'.format(name),
              '    python sampler.py models/{} --output-dir /tmp/samples'.format(name)]
    lines += retrain_lines(meta) if parameters_only else resume_lines(name, status)
    lines += ['', '## Sessions', ''] + session_table(runs) + ['', '## Files', ''] + file_table(model_dir)
    return '\n'.join(lines) + '\n'


def resume_lines(name, status):
    """README lines: how to resume the released run."""
    return ['    python train.py --resume models/{} --max-minutes {:.0f}   # + the minutes of this session'.format(
                name, status.get('wall_s', 0.0) / 60),
            '',
            '`--max-minutes` counts the run\'s whole training time, so a session of N minutes gives the total '
            'above plus N. A resumed run repeats the uninterrupted one exactly on the same code and thread '
            'count (the data order and noise come from the seed and the minibatch count).']


def retrain_lines(meta):
    """README lines of a release with the parameters only: it cannot be resumed; the command
    that trains it again."""
    return ['', '`checkpoint.npz` holds the parameters only (`python release.py RUN models/NAME --parameters-only`): '
            'the optimiser\'s state and log.jsonl are left out to keep the folder small, so `train.py --resume` '
            'refuses it. To train the model again (the sessions below, from the start):', '',
            '    ' + settings.retrain_command(meta)]


def draw_k_curve(meta, path):
    """heldout_bound.png: the monitored K against minibatches and training time, the paper's
    Table 1 value as a line (figures.heldout_figure; loads Theano)."""
    import figures
    dataset = meta['config'].get('args', {}).get('dataset')
    figures.heldout_figure(meta['status'].get('evaluations', []), path, presets.k_unit(dataset),
                           presets.TABLE_1.get(dataset, (None,))[0])


def draw_dataset_figure(meta, model_dir):
    """The data set's own figure (figures.DATASET_FIGURES: the Swiss roll, the heartbeat) from the
    checkpoint's parameters and the run's seed, as train.py draws it at the end of the run.
    Returns (file name, function name), or None for a data set without one."""
    import experiments
    import figures
    dataset = meta['config']['args']['dataset']
    if dataset not in figures.DATASET_FIGURES:
        return None
    name, figure = figures.DATASET_FIGURES[dataset]
    figure(experiments.from_checkpoint(os.path.join(model_dir, 'checkpoint.npz')), os.path.join(model_dir, name),
           seed=meta['status']['seed'])
    return name, figure.__name__


def release(run_dir, model_dir, parameters_only=False):
    """Copy the run into model_dir (its parameters only, without log.jsonl, if
    `parameters_only`) and write its README.md; returns the README's path."""
    copy_run(run_dir, model_dir, [n for n in RUN_FILES if not (parameters_only and n == 'log.jsonl')])
    if parameters_only:
        keep_parameters(os.path.join(model_dir, 'checkpoint.npz'))
    meta = checkpoints.load_checkpoint(os.path.join(model_dir, 'checkpoint.npz'))
    draw_k_curve(meta, os.path.join(model_dir, 'heldout_bound.png'))
    figure = draw_dataset_figure(meta, model_dir)
    path = os.path.join(model_dir, 'README.md')
    with open(path, 'w') as f:
        f.write(readme(os.path.basename(os.path.normpath(model_dir)), model_dir, meta,
                       progress_rows(os.path.join(model_dir, 'progress.csv')), figure))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run_dir', help='the training run (a run directory with checkpoint.npz)')
    p.add_argument('model_dir', help='the released model\'s folder, e.g. models/deadleaves')
    p.add_argument('--parameters-only', action='store_true',
                   help='keep only what evaluate.py and sampler.py load (no optimiser state, no log.jsonl): a '
                        'smaller folder that cannot be resumed')
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.run_dir, 'checkpoint.npz')):
        cli.fail('{} has no checkpoint.npz: give a run directory of train.py'.format(args.run_dir))
    if os.path.exists(args.model_dir) and not os.path.isdir(args.model_dir):
        cli.fail('{} is a file: give a folder for the released model'.format(args.model_dir))
    print('wrote', release(args.run_dir, args.model_dir, args.parameters_only))


if __name__ == '__main__':
    main()
