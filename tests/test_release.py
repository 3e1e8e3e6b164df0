"""release.py: a run copied into a released model's folder, its README made from the checkpoint."""
import csv
import hashlib
import json
import os

import numpy as np
import pytest

import bound
import checkpoints
import experiments
import presets
import release
import sampler
import train


def session(start, command, threads=1, processes=1):
    return {'from_iteration': start, 'processes': processes,
            'environment': {'cpu': 'Test CPU', 'isa': 'AVX2', 'git_commit': 'abcdef0123456789',
                            'command': command, 'openblas_threads': threads}}


def fake_run(run_dir, model_args=None, overrides=()):
    """A run of two sessions: 0-300 on one core, 300-500 on two processes; 500 s of training;
    model_args: the --model-args it was given; overrides: its checkpoint's record of them."""
    os.makedirs(run_dir)
    config = {'args': dict({'dataset': 'deadleaves', 'fidelity': 'fast'}, **({'model_args': model_args} if model_args else {})),
              'overrides': list(overrides),
              'sessions': [session(0, 'python train.py --dataset deadleaves'),
                           session(300, 'python train.py --resume x', processes=2)]}
    status = {'iterations_done': 500, 'wall_s': 500.0,
              'evaluations': [{'iteration': 250, 'wall_s': 250.0, 'heldout_K_bits': -1.5, 'heldout_stderr_bits': 0.01},
                              {'iteration': 500, 'wall_s': 500.0, 'heldout_K_bits': -0.25,
                               'heldout_stderr_bits': 0.02}]}
    checkpoints.save_checkpoint(os.path.join(run_dir, 'checkpoint.npz'),
                             {'shared': {'W': np.ones(3, np.float32)}, 'config': config, 'status': status})
    with open(os.path.join(run_dir, 'progress.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['iteration', 'wall_s'])
        for i in range(0, 501, 100):
            w.writerow([i, float(i)])
    with open(os.path.join(run_dir, 'log.jsonl'), 'w') as f:
        f.write('{"iteration": 1}\n')


def test_release_copies_the_run_and_describes_its_sessions(tmp_path):
    run, model = str(tmp_path / 'run'), str(tmp_path / 'models' / 'deadleaves')
    fake_run(run)
    text = open(release.release(run, model)).read()
    assert sorted(os.listdir(model)) == ['README.md', 'checkpoint.npz', 'heldout_bound.png', 'log.jsonl', 'progress.csv']
    assert '| 1 | 0 to 300 | 5.0 | 1 |' in text  # 300 s on one core
    assert '| 2 | 300 to 500 | 3.3 | 2 |' in text  # 200 s on two processes
    assert '0.19 core-hours' in text  # (300 x 1 + 200 x 2) / 3600 = 0.194
    assert 'K = -0.250 +- 0.020 bits/pixel (paper, Table 1: 1.489)' in text
    digest = hashlib.sha256(open(os.path.join(model, 'checkpoint.npz'), 'rb').read()).hexdigest()
    assert digest in text
    assert '--resume models/deadleaves --max-minutes 8 ' in text
    assert 'The deadleaves model of the `fast` preset, trained' in text  # no model arguments changed
    assert 'Widened' not in text


def test_release_names_the_model_arguments_the_run_changed(tmp_path):
    run, model = str(tmp_path / 'run'), str(tmp_path / 'models' / 'deadleaves64')
    fake_run(run, model_args={'n_hidden_conv': 64, 'ema': 0.9995},
             overrides=[{'flag': 'widen.py --n-hidden-conv', 'checkpoint': 32, 'given': 64, 'iteration': 300}])
    text = open(release.release(run, model)).read()
    assert '- Widened by `python widen.py` from 32 to 64 channels at minibatch 300:' in text
    assert 'The deadleaves model of the `fast` preset with `--model-args ema=0.9995,n_hidden_conv=64`' in text


def test_release_of_the_folder_itself_updates_its_readme(tmp_path):
    run = str(tmp_path / 'deadleaves')
    fake_run(run)
    release.release(run, run)
    text = open(os.path.join(run, 'README.md')).read()
    assert 'evaluate.py` has not been run' in text and 'no final bound (results.json) yet' in text
    with open(os.path.join(run, 'results.json'), 'w') as f:
        json.dump({'K_bits': 0.5, 'stderr_bits': 0.01, 'n_eval': 1000, 'n_t': 10, 'iterations': 500}, f)
    release.release(run, run)
    assert 'K = 0.500 +- 0.010 bits/pixel (1000 test examples, 10 draws of t each, at minibatch 500)' in open(
        os.path.join(run, 'README.md')).read()
    assert release.main([run, run]) is None


@pytest.mark.slow  # builds and compiles a small Swiss roll model
def test_release_of_a_swiss_roll_draws_figure_1_and_gives_K_in_bits(tmp_path):
    small = dict(n_train=500, n_eval=200)
    exp = experiments.build('swissroll', presets.model_args('swissroll', 'paper', small), 0)
    config = {'args': {'dataset': 'swissroll', 'fidelity': 'paper', 'model_args': small, 'seed': 0},
              'model': exp.args, 'sessions': [session(0, 'python train.py --dataset swissroll')]}
    status = {'iterations_done': 100, 'wall_s': 60.0, 'seed': 0,
              'evaluations': [{'iteration': 100, 'wall_s': 60.0, 'heldout_K_bits': 1.25, 'heldout_stderr_bits': 0.05}]}
    run, model = str(tmp_path / 'run'), str(tmp_path / 'models' / 'swissroll')
    os.makedirs(run)
    checkpoints.save_checkpoint(os.path.join(run, 'checkpoint.npz'), {
        'shared': {p.name: p.get_value() for p in exp.params}, 'config': config, 'status': status})
    text = open(release.release(run, model)).read()
    assert 'K = 1.250 +- 0.050 bits (paper, Table 1: 2.35)' in text and 'bits/pixel' not in text
    assert '- [swissroll_trajectories.png](swissroll_trajectories.png): ' in text
    assert os.path.getsize(os.path.join(model, 'swissroll_trajectories.png')) > 20000  # nine panels of points


def test_release_refuses_a_folder_without_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        release.main([str(tmp_path), str(tmp_path / 'm')])
    assert e.value.code == 2 and 'has no checkpoint.npz' in capsys.readouterr().err


def test_resume_refuses_a_parameters_only_checkpoint_in_one_line(tmp_path, capsys):
    run = str(tmp_path / 'run')
    fake_run(run)
    path = os.path.join(run, 'checkpoint.npz')
    checkpoints.save_checkpoint(path, checkpoints.parameters_only(checkpoints.load_checkpoint(path), ['W']))
    with pytest.raises(SystemExit) as e:
        train.main(['--resume', run])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1
    assert 'holds the parameters only' in err and 'train again with: python train.py --dataset deadleaves' in err


@pytest.mark.slow  # builds the fast digits run's model, bounds a few images and samples
def test_a_parameters_only_release_evaluates_and_samples_but_is_not_resumed(fast_digits_run, tmp_path, capsys):
    model = str(tmp_path / 'models' / 'digits')
    text = open(release.release(fast_digits_run, model, parameters_only=True)).read()
    run_checkpoint, kept_checkpoint = (os.path.join(d, 'checkpoint.npz') for d in (fast_digits_run, model))
    full, kept = checkpoints.load_checkpoint(run_checkpoint), checkpoints.load_checkpoint(kept_checkpoint)
    exp = experiments.from_checkpoint(run_checkpoint)
    names = {p.name for p in exp.params}
    assert set(kept['shared']) == names | {'ema/' + n for n in names}  # the run kept an average (ema=0.9)
    assert set(full['shared']) > set(kept['shared'])  # the optimiser's state left out
    for name, value in kept['shared'].items():
        np.testing.assert_array_equal(value, full['shared'][name])
    assert 'log.jsonl' not in os.listdir(model) and os.path.getsize(kept_checkpoint) < os.path.getsize(run_checkpoint)
    # evaluate.py's bound and sampler.py on it, as on the run's checkpoint
    released = experiments.from_checkpoint(kept_checkpoint)
    r, r_released = (bound.heldout_bound(e, e.test_x[:20], 2, seed=1) for e in (exp, released))
    assert r_released['K_bits'] == r['K_bits']
    sampler.main([model, '--n', '4', '--frames', '2', '--output-dir', str(tmp_path / 'samples')])
    assert os.path.getsize(tmp_path / 'samples' / 'sample_paper.png') > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main(['--resume', model])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'holds the parameters only' in err
    command = full['config']['sessions'][0]['environment']['command']
    assert err.rstrip().endswith('train again with: ' + command)
    assert '    ' + command in text and '--resume models/' not in text and 'log.jsonl' not in text.split('## Files')[1]
