"""train.py end to end: bad input, a short run, Ctrl-C and resume (subprocesses)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--model-args', 'n_train=2000,n_eval=400', '--batch-size', '100']


def train(*args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + list(args),
                          capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.parametrize('args, expected', [
    (['--dataset', 'nosuchset'], 'choose one of: swissroll, heartbeat'),
    (['--dataset', 'swissroll', '--model-args', 'n_hiden=3'], 'valid:'),
    (['--dataset', 'swissroll', '--model-args', 'n_hidden'], 'not key=value'),
    (['--batch-size', 'many'], "invalid int value: 'many'"),
    (['--resume_file', '/nonexistent/ckpt.pkl'], 'cannot read checkpoint'),
])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, args, expected):
    r = train(*args, '--output-dir', str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert 'Traceback' not in r.stderr


def test_short_run_writes_results_log_figures(tmp_path):
    out = tmp_path / 'new' / 'dir'  # created by train.py
    r = train('--dataset', 'swissroll', '--max-batches', '30', '--ext-every-n', '10',
              '--output-dir', str(out), '--suffix', 'cli', *SMALL)
    assert r.returncode == 0, r.stderr
    run_dir, = glob.glob(str(out / 'diffusion_swissroll_cli_*'))
    results = json.load(open(os.path.join(run_dir, 'results.json')))
    for key in ('K_bits', 'K_minus_Lnull_bits', 'stderr_bits', 'n_eval', 'T', 'exact_ll_bits',
                'dataset', 'seed', 'iterations', 'wall_s'):
        assert key in results
    assert results['iterations'] == 30 and results['n_eval'] == 400 and results['T'] == 40
    log = [json.loads(line) for line in open(os.path.join(run_dir, 'log.jsonl'))]
    assert [rec['iteration'] for rec in log] == list(range(1, 31))
    assert 'heldout_K_bits' in log[9]
    assert os.path.getsize(os.path.join(run_dir, 'swissroll_trajectories.png')) > 10000


def test_ctrl_c_writes_checkpoint_and_resume_finishes_the_run(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--dataset', 'swissroll',
           '--max-batches', '100000', '--ext-every-n', '20', '--output-dir', str(tmp_path)] + SMALL
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until training is under way
        if line.startswith('iter ') or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert '--resume_file' in err and 'Traceback' not in err
    ckpt, = glob.glob(str(tmp_path / '*' / 'checkpoint.pkl'))
    done = training.load_checkpoint(ckpt)['status']['iterations_done']
    assert done >= 20
    r = train('--resume_file', ckpt, '--max-batches', str(done + 40), '--ext-every-n', '20')
    assert r.returncode == 0, r.stderr
    results = json.load(open(os.path.join(os.path.dirname(ckpt), 'results.json')))
    assert results['iterations'] == done + 40 and results['resumed_from'] == done
