"""report.py: REPORT.md from the JSON files of run directories."""
import json
import os
import re

import numpy as np
import pytest

import checkpoints
import report
import settings

ENV = {'python': '3.11.7', 'numpy': '1.23.5', 'scipy': '1.10.1', 'theano': '1.0.5', 'cpu': 'AMD EPYC',
       'cores': 2, 'blas': '/x/libopenblas.so', 'openblas_core': 'Haswell', 'openblas_threads': 2,
       'OMP_NUM_THREADS': None, 'theano_flags': 'floatX=float32', 'project_version': '0.1.0',
       'git_commit': '0123456789abcdef', 'git_dirty': False,
       'command': 'python train.py --dataset swissroll --max-batches 100'}


def write_run(tmp_path, **extra):
    run = tmp_path / 'diffusion_swissroll_x'
    run.mkdir()
    results = {'dataset': 'swissroll', 'fidelity': 'paper', 'unit': 'bits', 'K_bits': 1.5,
               'K_minus_Lnull_bits': 5.594, 'stderr_bits': 0.02, 'paper_K_bits': 2.35,
               'paper_K_minus_Lnull_bits': 6.45, 'iterations': 100, 'wall_s': 90.0,
               'sessions': [{'from_iteration': 0, 'environment': ENV},
                            {'from_iteration': 60, 'environment': dict(ENV, command='python train.py --resume_file c')}],
               'not_the_paper': [{'key': 'n_hidden', 'value': 64, 'paper': '16 RBF units', 'reason': 'thin roll'}]}
    results.update(extra)
    json.dump(results, open(run / 'results.json', 'w'))
    return run


def test_report_row_commands_environment_and_non_paper_keys(tmp_path):
    run = write_run(tmp_path)
    text = report.write_report([str(run)], str(tmp_path / 'REPORT.md'))
    row = [line for line in text.splitlines() if line.startswith('| diffusion_swissroll_x')][0]
    assert ('| 1.500 | 0.020 | 2.350 | below the paper: 0.850 below it, 42.5 standard errors | 5.594 | 6.450 | bits '
            '| 100 | 1.5 min |') in row
    assert '1.5 min' in row and ('AMD EPYC (instruction set not recorded); OpenBLAS Haswell x2; numpy 1.23.5, '
                                 'Theano 1.0.5; 0123456') in row
    isa = dict(ENV, isa='AVX-512', c_march='x86-64-v3')
    assert report.environment_summary(isa).startswith('AMD EPYC (AVX-512, C code x86-64-v3); OpenBLAS Haswell')
    assert '`python train.py --dataset swissroll --max-batches 100`; `python train.py --resume_file c`' in text
    assert '`n_hidden` = 64 (paper: 16 RBF units): thin roll' in text
    assert open(tmp_path / 'REPORT.md').read() == text


def test_a_run_of_an_installed_package_names_its_version_instead_of_a_commit(tmp_path):
    installed = dict(ENV, git_commit=None, git_dirty=None, source='installed package')
    assert report.environment_summary(installed).endswith('Theano 1.0.5; installed 0.1.0')
    assert report.environment_summary(ENV).endswith('; 0123456')
    run = write_run(tmp_path, sessions=[{'from_iteration': 0, 'environment': installed}])
    text = report.write_report([str(run)], str(tmp_path / 'REPORT.md'))
    assert 'project 0.1.0, installed package\n' in text and 'commit None' not in text


def test_evaluation_file_takes_precedence(tmp_path):
    run = write_run(tmp_path)
    json.dump({'bound': {'K_bits': 1.7, 'K_minus_Lnull_bits': 5.8, 'stderr_bits': 0.01, 'n_t': 10},
               'discrete': {'nll_bits_per_dim': 3.25}, 'environment': dict(ENV, cpu='Intel Xeon')},
              open(run / 'evaluation_test.json', 'w'))
    row = report.run_row(str(run))
    assert row['K'] == 1.7 and row['source'] == 'evaluate.py (10 draws each)'
    assert 'Intel Xeon' in report.environment_summary(row['environment'])
    assert 'discrete NLL 3.250 bits/dim' in '\n'.join(report.run_section(row))


def test_an_evaluation_of_an_earlier_checkpoint_does_not_replace_the_final_bound(tmp_path):
    run = write_run(tmp_path)  # results.json at 100 minibatches
    json.dump({'bound': {'K_bits': 1.7, 'K_minus_Lnull_bits': 5.8, 'stderr_bits': 0.01, 'n_t': 10}, 'iterations': 80},
              open(run / 'evaluation_test.json', 'w'))
    row = report.run_row(str(run))
    assert row['K'] == 1.5 and row['source'] == 'results.json' and row['iterations'] == 100


def test_train_command_quotes_model_args():
    cmd = settings.train_command({'dataset': 'swissroll', 'fidelity': 'code', 'model_args': {'T': 20, 'expert': 'x y'},
                                'batch_size': 100, 'lr': 0.001, 'optimizer': 'rmsprop', 'seed': 3,
                                'max_batches': 50, 'max_epochs': None, 'max_minutes': None})
    assert cmd == ("python train.py --dataset swissroll --fidelity code --model-args "
                   "'T=20,expert='\"'\"'x y'\"'\"'' --batch-size 100 --lr 0.001 --optimizer rmsprop "
                   "--seed 3 --max-batches 50")


def test_command_line_refuses_unfinished_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        report.main([str(tmp_path)])
    assert stop.value.code == 2 and 'no results.json' in capsys.readouterr().err


def test_run_without_recorded_commands_gets_one_from_its_checkpoint(tmp_path):
    import checkpoints
    run = write_run(tmp_path, sessions=[])
    args = {'dataset': 'swissroll', 'fidelity': 'paper', 'model_args': {}, 'seed': 0, 'max_batches': 100}
    checkpoints.save_checkpoint(str(run / 'checkpoint.npz'), {'shared': {}, 'status': {'iterations_done': 100}, 'config': {'args': args}})
    assert report.run_row(str(run))['commands'] == [
        'python train.py --dataset swissroll --fidelity paper --seed 0 --max-batches 100']


def test_extrapolation_recovers_a_known_curve():
    """A curve K(n) = 2 - 5 n^-0.5 measured at n = 100..10000 with noise 0.01 reaches 1.97
    at n = (5 / 0.03)^2 = 27778, beyond the last point; the fit's range holds it, and a
    target above K_inf is never reached."""
    import numpy as np
    rng = np.random.default_rng(0)
    n = np.linspace(100, 10000, 40)
    evaluations = [{'iteration': int(i), 'heldout_K_bits': 2 - 5 * i ** -0.5 + 0.01 * rng.standard_normal(),
                    'heldout_stderr_bits': 0.01} for i in n]
    fit = report.extrapolate(evaluations, 1.97)
    assert abs(fit['K_inf'] - 2) < 3 * fit['K_inf_stderr'] and fit['K_inf_stderr'] < 0.3
    lo, hi = fit['minibatches_16_84']
    assert lo / 2 < 27778 < 2 * hi and lo < fit['minibatches_median'] < hi
    assert fit['last_iteration'] == 10000 and fit['n_points'] == 36  # the first tenth left out
    assert report.extrapolate(evaluations, 3.0)['fraction_never_reached'] > 0.99
    with pytest.raises(ValueError, match='at least 4'):
        report.extrapolate(evaluations[:3], 1.9)


def test_verdict_from_K_its_standard_error_and_the_paper():
    """At or above the paper: reproduced; below by at most 2 standard errors: within; further
    below: below the paper; each with the gap and its size in standard errors."""
    assert report.verdict(2.586, 0.019, 2.35) == 'reproduced: 0.236 above the paper (12.4 standard errors)'
    assert report.verdict(-2.418, 0.005, -2.414) == 'within 0.8 standard errors: 0.004 below the paper'
    assert report.verdict(0.96, 0.02, 1.0).startswith('within 2.0 standard errors')
    assert report.verdict(0.958, 0.02, 1.0) == 'below the paper: 0.042 below it, 2.1 standard errors'
    assert report.verdict(0.147, 0.010, 1.489) == 'below the paper: 1.342 below it, 134.2 standard errors'
    assert report.verdict(0.9, 0.0, 1.0).startswith('below the paper')  # no standard error: no slack
    assert report.verdict(1.2, 0.1, None) == 'no Table 1 figure'
    assert report.verdict(-0.065, 0.165, -0.55, 'stand-in data: x') == 'not comparable: stand-in data: x'


def test_stand_in_data_are_not_compared(tmp_path):
    """Bark from the built-in textures, and the digits, carry a caveat instead of a verdict;
    bark from a folder of the paper's images is compared."""
    import checkpoints
    assert 'scikit-image' in report.stand_in('bark', {})
    assert report.stand_in('bark', {'folder': '/data/uiuc'}) is None
    assert 'instead of MNIST' in report.stand_in('digits', {})
    assert '5,000 MNIST digits' in report.stand_in('mnist5k', {})
    assert report.stand_in('deadleaves', {}) is None
    run = write_run(tmp_path, dataset='bark', unit='bits/pixel', K_bits=-0.065, stderr_bits=0.165,
                    paper_K_bits=-0.55, paper_K_minus_Lnull_bits=1.5, not_the_paper=[])
    text = report.write_report([str(run)], str(tmp_path / 'REPORT.md'))
    assert "not comparable: stand-in data: scikit-image's grass, gravel and brick textures" in text
    row = [line for line in text.splitlines() if line.startswith('| diffusion_swissroll_x')][0]
    assert '- caveat: stand-in data' in text and 'reproduced' not in row
    args = {'dataset': 'bark', 'fidelity': 'paper', 'model_args': {'folder': str(tmp_path)}, 'seed': 0}
    checkpoints.save_checkpoint(str(run / 'checkpoint.npz'),
                             {'shared': {}, 'status': {'iterations_done': 100}, 'config': {'args': args}})
    assert report.run_row(str(run))['verdict'] == 'reproduced: 0.485 above the paper (2.9 standard errors)'


def test_data_sets_without_a_run_get_their_command_and_cost(tmp_path):
    swissroll = write_run(tmp_path)
    text = report.report_table([report.run_row(str(swissroll))])
    not_run = [line for line in text.splitlines() if line.startswith('| not run here')]
    assert len(not_run) == 2
    assert '| MNIST |' in not_run[0]
    assert '`python datasets.py fetch MNIST && python train.py --dataset MNIST`' in not_run[0]
    assert '| CIFAR10 | code |' in not_run[1] and '| 5.400 |' in not_run[1] and '40 days' in not_run[1]
    cifar = report.run_row(str(swissroll))
    cifar['dataset'] = 'CIFAR10'
    assert '| CIFAR10 | code |' not in report.report_table([cifar])


def test_no_duplicated_columns_and_no_absolute_paths(tmp_path):
    env = dict(ENV, theano_flags='blas.ldflags=-L/home/me/.venv/scipy.libs -l:libopenblasp.so -Wl,-rpath,/home/me/x')
    # K - L_null as far from the paper's as K (the same L_null): a column of their differences
    # would repeat one of K and the paper's K
    run = write_run(tmp_path, sessions=[{'from_iteration': 0, 'environment': env}], K_minus_Lnull_bits=5.6)
    text = report.write_report([str(run)], str(tmp_path / 'REPORT.md'))
    table = [line.split(' | ') for line in text.splitlines() if line.startswith('| ')]
    columns = list(zip(*table[1:]))
    assert len(set(report.COLUMNS)) == len(report.COLUMNS) == len(table[0])
    assert all(a != b for i, a in enumerate(columns) for b in columns[i + 1:] if any(a))
    assert not re.search(r'(?<![\w.])/(home|x)\b', text)
    assert 'BLAS .../libopenblas.so' in text and '-L.../scipy.libs' in text


def test_the_committed_report_is_what_report_py_makes(tmp_path):
    """REPORT.md in the repository equals what `python report.py` makes from the committed
    models/*/ (run it after changing them)."""
    made = report.write_report(report.committed_dirs(), str(tmp_path / 'REPORT.md'), report.ROOT)
    with open(os.path.join(report.ROOT, 'REPORT.md')) as f:
        assert f.read() == made, 'REPORT.md is stale: run python report.py'
    rows = [line.split(' | ')[:2] for line in made.splitlines() if line.startswith('| models/')]
    assert ['| models/swissroll', 'swissroll'] in rows and ['| models/heartbeat', 'heartbeat'] in rows  # the toy rows
    assert len({folder for folder, _ in rows}) == len(rows) == len(report.committed_dirs())  # one row per model


def test_the_readme_table_is_what_report_py_makes():
    rows = [report.run_row(d, os.path.relpath(d, report.ROOT)) for d in report.committed_dirs()]
    with open(os.path.join(report.ROOT, 'README.md')) as f:
        readme = f.read()
    block = readme.split(report.README_START)[1].split(report.README_END)[0]
    assert block == '\n' + report.readme_table(rows) + '\n', 'the README\'s table is stale: run python report.py'
    assert '| swissroll | 2.586 +- 0.019 bits' in block


def test_update_readme_replaces_only_the_marked_table(tmp_path):
    path = tmp_path / 'README.md'
    path.write_text('intro\n{}\nold\n{}\nafter\n'.format(report.README_START, report.README_END))
    report.update_readme(str(path), '| new |')
    assert path.read_text() == 'intro\n{}\n| new |\n{}\nafter\n'.format(report.README_START, report.README_END)
    (tmp_path / 'bare.md').write_text('no markers')
    with pytest.raises(ValueError):
        report.update_readme(str(tmp_path / 'bare.md'), '| new |')


def test_the_committed_folders_are_the_released_models_with_results(tmp_path, monkeypatch, capsys):
    for folder in ('models/swissroll', 'models/unfinished', 'models/deadleaves', 'results/heartbeat'):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ('models/swissroll', 'models/deadleaves', 'results/heartbeat'):
        (tmp_path / folder / 'results.json').write_text(json.dumps(
            {'dataset': folder.split('/')[1], 'fidelity': 'paper', 'K_bits': 1.0, 'stderr_bits': 0.1,
             'sessions': [{'environment': ENV}]}))
    (tmp_path / 'models' / 'swissroll' / 'README.md').write_text('made by ...')
    found = report.committed_dirs(str(tmp_path))
    assert [os.path.relpath(d, tmp_path) for d in found] == ['models/deadleaves', 'models/swissroll']
    text = report.write_report(found, str(tmp_path / 'REPORT.md'), str(tmp_path))
    assert text.split('\n')[2].startswith('Made by `python report.py` from the files committed')
    names = [line.split(' | ')[:2] for line in text.splitlines() if line.startswith('| ')]
    assert names[1:3] == [['| models/deadleaves', 'deadleaves'], ['| models/swissroll', 'swissroll']]
    assert ['| not in the repository', 'heartbeat'] in names and ['| not in the repository', 'MNIST'] in names
    assert '- how it was made (machine, load, time): [models/swissroll/README.md](models/swissroll/README.md)' in text
    assert 'models/deadleaves/README.md' not in text
    for folder in ('swissroll', 'deadleaves'):
        (tmp_path / 'models' / folder / 'results.json').unlink()
    monkeypatch.setattr(report, 'ROOT', str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        report.main([])
    assert stop.value.code == 2 and 'give run directories' in capsys.readouterr().err


def monitored_run(folder, dataset, ks):
    """A run directory whose checkpoint holds the monitor's K at 250, 500, ... minibatches."""
    os.makedirs(folder)
    evaluations = [{'iteration': 250 * (i + 1), 'wall_s': 100.0 * (i + 1), 'heldout_K_bits': k,
                    'heldout_stderr_bits': 0.01} for i, k in enumerate(ks)]
    checkpoints.save_checkpoint(os.path.join(folder, 'checkpoint.npz'), {
        'shared': {'W': np.zeros(2, np.float32)}, 'config': {'args': {'dataset': dataset}},
        'status': {'iterations_done': 250 * len(ks), 'wall_s': 100.0 * len(ks), 'evaluations': evaluations}})


def test_curves_of_two_runs_share_a_figure_and_a_table_at_common_minibatches(tmp_path, capsys):
    monitored_run(str(tmp_path / 'wide'), 'deadleaves', [0.5, 0.9, 1.1])
    monitored_run(str(tmp_path / 'narrow'), 'deadleaves', [0.4, 0.7])
    png = str(tmp_path / 'k.png')
    assert report.main(['--curves', png, str(tmp_path / 'wide'), str(tmp_path / 'narrow')]) == [250, 500]
    assert os.path.getsize(png) > 0
    out = capsys.readouterr().out.splitlines()
    assert out == ['minibatches | wide | narrow', '250 | 0.500 +- 0.010 | 0.400 +- 0.010',
                   '500 | 0.900 +- 0.010 | 0.700 +- 0.010']


def test_curves_refuse_runs_of_different_data_sets(tmp_path, capsys):
    monitored_run(str(tmp_path / 'a'), 'deadleaves', [0.5])
    monitored_run(str(tmp_path / 'b'), 'digits', [0.5])
    with pytest.raises(SystemExit) as stop:
        report.main(['--curves', str(tmp_path / 'k.png'), str(tmp_path / 'a'), str(tmp_path / 'b')])
    assert stop.value.code == 2
    assert 'one data set; these are of deadleaves, digits' in capsys.readouterr().err
