"""train.py end to end: bad input, a short run, Ctrl-C, kill -9 and resume, extending a run, an
average of the parameters begun at a resume."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY_HEARTBEAT as HEARTBEAT

import checkpoints
import experiments
import settings
import train

pytestmark = pytest.mark.slow  # runs train.py (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--model-args', 'n_train=2000,n_eval=400', '--batch-size', '100']
# a heartbeat run of a few seconds: 300 minibatches, a checkpoint every 100; T=100, not 2,000:
# the final bound's 50 examples x (T - 1) draws took 17 s of each run on the busy core, 4 s now
TINY_HEARTBEAT = HEARTBEAT + ['--max-batches', '300']


# A run still going after this long is hung: a guard, not a measure (these runs take seconds
# to a few minutes on a busy core). With 300 s for the first line, a run still compiling after
# that on an overloaded core would have been signalled before training, at the wrong moment.
HANG_S = 1800


def train_cli(*args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + list(args),
                          capture_output=True, text=True, timeout=HANG_S, **kw)


@pytest.mark.parametrize('args, expected', [
    (['--dataset', 'nosuchset'], 'choose one of: swissroll, heartbeat'),
    (['--fidelity', 'exact'], "invalid choice: 'exact'"),
    (['--model-args', 'n_hiden=3'], 'valid:'),
    (['--model-args', 'n_hidden'], 'not key=value'),
    (['--model-args', '=3'], "item '=3' is not key=value"),
    (['--model-args', ',,,'], "--model-args ',,,' has an empty item"),
    (['--model-args', 'T=10,,n_hidden=8'], 'has an empty item'),
    (['--model-args', 'T=10,'], 'has an empty item'),
    (['--model-args', ''], "--model-args '' has an empty item"),
    (['--model-args', 'T=10,T=20'], '--model-args gives T twice'),
    (['--dataset', 'heartbeat', '--model-args', 'n_basis=4,crop=8'], 'unknown --model-args key(s) crop for heartbeat'),
    (['--model-args', 'n_hidden=-5'], 'n_hidden must be an integer >= 1'),
    (['--dataset', 'heartbeat', '--model-args', 'T=1'], 'T must be an integer >= 2'),
    (['--dataset', 'heartbeat', '--model-args', 'p=1.5'], 'p must be a number in (0, 1)'),
    (['--dataset', 'heartbeat', '--model-args', 'readout=smooth'], "readout must be one of 'basis'"),
    (['--dataset', 'digits', '--model-args', 'n_scales=5'], 'cannot be mean-pooled to 5 scales'),
    (['--batch-size', '0'], '--batch-size 0: must be an integer >= 1'),
    (['--batch-size', '-3'], '--batch-size -3: must be an integer >= 1'),
    (['--batch-size', 'many'], "invalid int value: 'many'"),
    (['--batch-size', '1000000000000', '--model-args', 'n_train=1000'],
     '--batch-size 1000000000000: the training set has 1000 examples; give at most 1000'),
    (['--lr', '-1'], '--lr -1.0: must be a finite number > 0'),
    (['--lr', '0'], '--lr 0.0: must be a finite number > 0'),
    (['--lr', 'nan'], '--lr nan: must be a finite number > 0'),
    (['--lr-final', '0'], '--lr-final 0.0: must be a finite number > 0 and at most --lr'),
    (['--lr', '1e-3', '--lr-final', '1e-2'], 'at most --lr'),
    (['--optimizer', 'sgdx'], "invalid choice: 'sgdx'"),
    (['--seed', '-1'], '--seed -1: must be an integer >= 0'),
    (['--max-batches', '-5'], '--max-batches -5: must be an integer >= 1'),
    (['--max-epochs', '0'], '--max-epochs 0: must be an integer >= 1'),
    (['--max-minutes', '0'], '--max-minutes 0.0: must be a finite number > 0'),
    (['--max-minutes', 'inf'], '--max-minutes inf: must be a finite number > 0'),
    (['--ext-every-n', '0'], '--ext-every-n 0: must be an integer >= 1'),
    (['--suffix', 'a/b'], "--suffix 'a/b': must not contain"),
    (['--data-path', __file__], 'is a file, not a folder'),
    (['--resume_file', '/nonexistent/ckpt.npz'], 'cannot read checkpoint'),
    (['--resume', os.path.join(ROOT, 'docs')],  # a folder without a checkpoint
     'cannot read checkpoint {}'.format(os.path.join(ROOT, 'docs', 'checkpoint.npz'))),
    (['--convert-checkpoint', '/nonexistent/ckpt.pkl'], 'cannot read checkpoint'),
    (['--output-dir', '/proc/no/such/place'], '--output-dir /proc/no/such/place'),
])
def test_bad_value_of_every_flag_is_one_line_exit_2_and_leaves_no_run_directory(tmp_path, capsys, args, expected):
    out = tmp_path / 'runs'
    argv = args + ([] if '--output-dir' in args else ['--output-dir', str(out)])
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not out.exists() or os.listdir(out) == []


@pytest.mark.parametrize('flag', ['--resume', '--resume_file', '--resume-file'])
def test_resume_and_its_old_spellings_are_one_option(flag):
    assert train.build_parser().parse_args([flag, 'runs/x']).resume == 'runs/x'


def test_bad_flag_on_the_real_command_line():
    r = train_cli('--dataset', 'heartbeat', '--lr', '-1')
    assert r.returncode == 2 and r.stderr.strip() == 'train.py: error: --lr -1.0: must be a finite number > 0'


def test_data_set_names_in_any_case(tmp_path):
    assert settings.new_run_settings({'dataset': 'HeartBeat', 'max_batches': None, 'max_epochs': None})['dataset'] \
        == 'heartbeat'
    assert settings.new_run_settings({'dataset': 'cifar10'})['dataset'] == 'CIFAR10'
    assert settings.new_run_settings({'dataset': 'Dead_Leaves'})['dataset'] == 'deadleaves'


def test_explicit_max_batches_is_kept_with_max_epochs():
    s = settings.new_run_settings({'dataset': 'heartbeat', 'max_batches': 40000, 'max_epochs': 2})
    assert s['max_batches'] == 40000 and s['max_epochs'] == 2  # equal to the default, still explicit
    s = settings.new_run_settings({'dataset': 'heartbeat', 'max_batches': None, 'max_epochs': 2})
    assert s['max_batches'] is None  # the data set's default length gives way to --max-epochs


def test_short_run_writes_results_log_figures(tmp_path):
    out = tmp_path / 'new' / 'dir'  # created by train.py
    r = train_cli('--dataset', 'swissroll', '--max-batches', '30', '--ext-every-n', '10',
                  '--output-dir', str(out), '--suffix', 'cli', *SMALL)
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(out / 'diffusion_swissroll_cli_*'))
    results = json.load(open(os.path.join(run_dir, 'results.json')))
    for key in ('K_bits', 'K_minus_Lnull_bits', 'stderr_bits', 'n_eval', 'T', 'exact_ll_bits',
                'dataset', 'seed', 'iterations', 'wall_s', 'sessions'):
        assert key in results
    assert results['iterations'] == 30 and results['n_eval'] == 400 and results['T'] == 40
    env = results['sessions'][0]['environment']
    for key in ('python', 'numpy', 'scipy', 'theano', 'blas', 'openblas_core', 'cpu', 'theano_flags',
                'git_commit', 'command', 'OMP_NUM_THREADS'):
        assert key in env
    assert env['numpy'] == np.__version__ and '--suffix cli' in env['command']
    log = [json.loads(line) for line in open(os.path.join(run_dir, 'log.jsonl'))]
    assert [rec['iteration'] for rec in log] == list(range(1, 31))
    assert 'heldout_K_bits' in log[9]
    assert os.path.getsize(os.path.join(run_dir, 'swissroll_trajectories.png')) > 10000


def finished(run_dir):
    return json.load(open(os.path.join(run_dir, 'results.json')))


def start_and_stop(tmp_path, signum, after_line):
    """Start the tiny heartbeat run, send `signum` once `after_line` was printed; returns
    (the process's exit code, stderr, run directory)."""
    cmd = [sys.executable, os.path.join(ROOT, 'train.py')] + TINY_HEARTBEAT + ['--output-dir', str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + HANG_S
    for line in proc.stdout:  # wait until training is under way (the run prints a line at least every 30 s)
        if line.startswith(after_line):
            break
        if time.time() > deadline:
            proc.kill()
            pytest.fail('no {!r} line in {} s: the run hung'.format(after_line, HANG_S))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=HANG_S)
    run_dir, = glob.glob(str(tmp_path / 'diffusion_heartbeat_*'))
    return proc.returncode, err, run_dir


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp('uninterrupted')
    r = train_cli(*TINY_HEARTBEAT, '--output-dir', str(out))
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(out / 'diffusion_heartbeat_*'))
    return finished(run_dir), open(os.path.join(run_dir, 'log.jsonl')).read().splitlines()


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGKILL])
def test_printed_resume_command_reproduces_the_uninterrupted_run(tmp_path, uninterrupted, signum):
    """Ctrl-C writes a checkpoint and prints the command; kill -9 leaves the last periodic
    checkpoint. Either way `--resume RUN_DIR` alone finishes the run as planned, exactly."""
    # the progress line comes just before the periodic checkpoint: kill -9 one line later
    code, err, run_dir = start_and_stop(tmp_path, signum, 'iter 100' if signum == signal.SIGINT else 'iter 200')
    ckpt = os.path.join(run_dir, 'checkpoint.npz')
    if signum == signal.SIGINT:
        assert code == 130 and 'Traceback' not in err
        assert 'python train.py --resume {}'.format(run_dir) in err
    else:
        assert code == -signal.SIGKILL
    done = checkpoints.load_checkpoint(ckpt)['status']['iterations_done']
    assert 100 <= done < 300
    r = train_cli('--resume', run_dir)
    assert r.returncode == 0, r.stderr
    results, log = finished(run_dir), open(os.path.join(run_dir, 'log.jsonl')).read().splitlines()
    expected, expected_log = uninterrupted
    assert results['K_bits'] == expected['K_bits'] and results['resumed_from'] == done
    strip = [{k: v for k, v in json.loads(line).items() if k not in ('step_s', 'wall_s')} for line in log]
    assert strip == [{k: v for k, v in json.loads(line).items() if k not in ('step_s', 'wall_s')}
                     for line in expected_log]


def test_extended_run_keeps_its_learning_rate_plan_and_flags_are_checked(tmp_path):
    r = train_cli(*TINY_HEARTBEAT, '--max-batches', '200', '--lr-final', '1e-4', '--output-dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(tmp_path / 'diffusion_heartbeat_*'))
    ckpt = os.path.join(run_dir, 'checkpoint.npz')
    assert checkpoints.load_checkpoint(ckpt)['shared']['optimizer.lr'] == pytest.approx(1e-4, rel=1e-3)
    for args, message in [(['--seed', '8'], '--seed cannot change when resuming'),
                          (['--output-dir', str(tmp_path)], '--output-dir cannot be used with --resume'),
                          (['--max-batches', '0'], '--max-batches 0: must be')]:
        bad = train_cli('--resume_file', ckpt, *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    r = train_cli('--resume_file', ckpt, '--max-batches', '300', '--seed', '7')  # the same seed is fine
    assert r.returncode == 0, r.stderr
    assert "--max-batches 300 replaces the checkpoint's 200" in r.stdout
    state = checkpoints.load_checkpoint(ckpt)
    assert state['status']['iterations_done'] == 300
    assert state['shared']['optimizer.lr'] == pytest.approx(1e-4, rel=1e-3)  # held, not raised again
    assert state['config']['overrides'] == [{'flag': '--max-batches', 'checkpoint': 200, 'given': 300,
                                             'iteration': 200}]
    assert len(state['config']['sessions']) == 2



# ---------------------------------------------------------------- an average of the parameters begun at a resume

def test_only_the_average_may_change_on_resume(capsys):
    saved = dict(settings.DEFAULTS, dataset='heartbeat', model_args={'n_hidden': 20})
    model = {'T': 2000, 'n_hidden': 20, 'ema': None}
    s, overrides = settings.resumed_settings({'model_args': {'T': 2000, 'n_hidden': 20}}, saved, model)
    assert s['model_args'] == {'n_hidden': 20} and overrides == []  # the run's own values: no change
    s, overrides = settings.resumed_settings({'model_args': {'T': 2000, 'ema': 0.999}}, saved, model)
    assert s['model_args'] == {'n_hidden': 20, 'ema': 0.999}
    assert overrides == [{'flag': '--model-args', 'checkpoint': {'ema': None}, 'given': {'ema': 0.999}}]
    checkpoint = {'config': {'args': {'dataset': 'heartbeat'}, 'model': model}}
    assert settings.resumed_model_config(checkpoint, s)['ema'] == 0.999
    for model_args, message in [({'ema': 0.999, 'n_hidden': 21}, '--model-args n_hidden cannot change when resuming '
                                  '(the run has n_hidden=20): only ema may change; start a new run instead'),
                                ({'ema': 1.5}, '--model-args ema=1.5: ema must be a number in (0, 1)')]:
        with pytest.raises(SystemExit) as e:
            settings.resumed_settings({'model_args': model_args}, saved, model)
        lines = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(lines) == 1 and message in lines[0], lines


@pytest.fixture(scope='module')
def without_average(tmp_path_factory):
    """The tiny heartbeat run at 100 minibatches, without an average of the parameters."""
    out = tmp_path_factory.mktemp('without_average')
    r = train_cli(*TINY_HEARTBEAT, '--max-batches', '100', '--output-dir', str(out))
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(out / 'diffusion_heartbeat_*'))
    return run_dir


def resumed(run_dir, *args):
    r = train_cli('--resume', run_dir, *args)
    assert r.returncode == 0, r.stderr
    return r


def state(run_dir):
    return checkpoints.load_checkpoint(os.path.join(run_dir, 'checkpoint.npz'))


def test_an_average_begun_at_a_resume_starts_as_the_parameters_loaded(without_average, tmp_path):
    run_dir = shutil.copytree(without_average, str(tmp_path / 'run'))
    bad = train_cli('--resume', run_dir, '--model-args', 'ema=0.9,n_hidden=21')
    assert bad.returncode == 2 and bad.stderr.strip() == (
        'train.py: error: --model-args n_hidden cannot change when resuming (the run has n_hidden=20): only ema '
        'may change; start a new run instead')
    r = resumed(run_dir, '--model-args', 'ema=0.9,n_hidden=20')  # n_hidden as it was; no minibatch (100 done)
    assert "--model-args {'ema': 0.9} replaces the checkpoint's {'ema': None}" in r.stdout
    before, after = state(without_average)['shared'], state(run_dir)['shared']
    params = [name[len('ema/'):] for name in after if name.startswith('ema/')]
    assert params and after['ema.n'] == 0
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    for name in params:
        np.testing.assert_array_equal(after['ema/' + name], before[name], err_msg=name)
    results = finished(run_dir)
    assert results['K_bits'] == finished(without_average)['K_bits']  # the average is the parameters
    assert results['ema'] == 0.9 and 'K_bits' in results['without_ema']


def test_an_average_begun_at_a_resume_resumes_to_the_last_digit_and_keeps_its_rate(without_average, tmp_path):
    """The average begun at minibatch 100 in one session to 160 equals the same run stopped at
    130 and resumed without the flag, bit for bit; it follows the parameters, which are those
    of the run without an average; another rate later goes on with the average and its count."""
    once, twice, plain = (shutil.copytree(without_average, str(tmp_path / name)) for name in ('once', 'twice', 'plain'))
    resumed(once, '--model-args', 'ema=0.9', '--max-batches', '160')
    resumed(twice, '--model-args', 'ema=0.9', '--max-batches', '130')
    other_rate = shutil.copytree(twice, str(tmp_path / 'other_rate'))
    resumed(twice, '--max-batches', '160')
    resumed(plain, '--max-batches', '160')
    resumed(other_rate, '--model-args', 'ema=0.5', '--max-batches', '160')  # below the warm-up's rate
    a, b = state(once)['shared'], state(twice)['shared']
    assert sorted(a) == sorted(b) and a['ema.n'] == 60  # the minibatches since the resume
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    start, last = state(without_average)['shared'], state(plain)['shared']
    params = [name[len('ema/'):] for name in a if name.startswith('ema/')]
    for name in last:  # the average does not change training
        np.testing.assert_array_equal(a[name], last[name], err_msg=name)
    moved = sum(np.abs(a[name] - start[name]).sum() for name in params)  # the parameters since the resume
    behind = sum(np.abs(a[name] - a['ema/' + name]).sum() for name in params)  # the average behind them
    assert 0 < behind < 0.5 * moved
    config = state(twice)['config']
    assert config['model']['ema'] == 0.9 and config['args']['model_args']['ema'] == 0.9
    assert config['overrides'][0] == {'flag': '--model-args', 'checkpoint': {'ema': None}, 'given': {'ema': 0.9},
                                      'iteration': 100}
    assert finished(twice)['K_bits'] == finished(once)['K_bits'] and finished(twice)['ema'] == 0.9
    c = state(other_rate)
    assert c['shared']['ema.n'] == 60 and c['config']['model']['ema'] == 0.5
    assert {'flag': '--model-args', 'checkpoint': {'ema': 0.9}, 'given': {'ema': 0.5},
            'iteration': 130} in c['config']['overrides']
    for name in params:
        np.testing.assert_array_equal(c['shared'][name], a[name], err_msg=name)
        assert not np.array_equal(c['shared']['ema/' + name], a['ema/' + name])
    path = os.path.join(twice, 'checkpoint.npz')  # evaluate.py and sampler.py load the average, or --no-ema the last
    for ema, prefix in ((True, 'ema/'), (False, '')):
        for p in experiments.from_checkpoint(path, ema=ema).params:
            np.testing.assert_array_equal(p.get_value(), b[prefix + p.name], err_msg=p.name)


# ---------------------------------------------------------------- the command lines of train, evaluate, sampler

@pytest.mark.parametrize('script', ['train', 'evaluate', 'sampler'])
def test_help_answers_without_theano_and_shows_the_defaults(script):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script + '.py'), '--help'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '--output-dir' in r.stdout and '(default: ' in r.stdout and 'examples:' in r.stdout
    check = ('import sys; import {0}; p = {0}.build_parser(); '
             'assert p.description.rstrip().endswith("."), p.description; '
             'assert "theano" not in sys.modules, "theano loaded"').format(script)
    r = subprocess.run([sys.executable, '-c', check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr



@pytest.mark.parametrize('script, flag', [('evaluate', '--output-dir'), ('evaluate', '--out-dir'),
                                          ('sampler', '--output-dir'), ('sampler', '--out')])
def test_one_name_for_the_output_folder_and_the_old_ones(script, flag):
    module = __import__(script)
    assert module.build_parser().parse_args(['runs/x', flag, 'elsewhere']).output_dir == 'elsewhere'


def test_a_default_batch_size_beyond_the_training_set_is_cut_and_a_given_one_refused(capsys):
    s = {'batch_size': 100}
    settings.check_batch_size(s, 40, given=False)  # a small folder of images under the default
    assert s['batch_size'] == 40 and 'minibatches of 40' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        settings.check_batch_size({'batch_size': 100}, 40, given=True)
    assert e.value.code == 2 and '--batch-size 100: the training set has 40 examples' in capsys.readouterr().err
