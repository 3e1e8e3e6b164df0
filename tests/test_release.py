"""release.py: a run copied into a released model's folder, its README made from the checkpoint."""
import csv
import hashlib
import json
import os

import numpy as np
import pytest

import checkpoints
import experiments
import presets
import release


def session(start, command, threads=1, processes=1):
    return {'from_iteration': start, 'processes': processes,
            'environment': {'cpu': 'Test CPU', 'isa': 'AVX2', 'git_commit': 'abcdef0123456789',
                            'command': command, 'openblas_threads': threads}}


def fake_run(run_dir, model_args=None):
    """A run of two sessions: 0-300 on one core, 300-500 on two processes; 500 s of training;
    model_args: the --model-args it was given."""
    os.makedirs(run_dir)
    config = {'args': dict({'dataset': 'deadleaves', 'fidelity': 'fast'}, **({'model_args': model_args} if model_args else {})),
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


def test_release_names_the_model_arguments_the_run_changed(tmp_path):
    run, model = str(tmp_path / 'run'), str(tmp_path / 'models' / 'deadleaves64')
    fake_run(run, model_args={'n_hidden_conv': 64, 'ema': 0.9995})
    text = open(release.release(run, model)).read()
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
