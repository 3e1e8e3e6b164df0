"""Step rules, the main loop, checkpoints and resume (steprules.py, mainloop.py, checkpoints.py, extensions.py)."""
import json
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import theano
import theano.tensor as T

import checkpoints
import extensions as E
import mainloop
import presets
import steprules
import streams


def one_step(rule, p0, g_value):
    p = theano.shared(np.asarray(p0, dtype='float32'), name='p')
    g = T.vector('g')
    cost = T.sum(p * g)  # d cost / d p = g
    updates, n_bad = steprules.descent_updates(cost, [p], rule)
    f = theano.function([g], [], updates=updates)
    f(np.asarray(g_value, dtype='float32'))
    return p.get_value(), int(n_bad.get_value()), rule


@pytest.mark.parametrize('fidelity, optimizer, eps', [('code', 'rmsprop', 1e-20), ('paper', 'rmsprop', 1e-10),
                                                     ('code', 'adam', 1e-8)])
def test_step_rule_takes_the_fidelitys_arguments(fidelity, optimizer, eps):
    """train.py's and bench.py's step rule: the code preset's RMSProp has max_scaling 1e10."""
    rule = steprules.step_rule(optimizer, 0.01, presets.STEP_RULE_ARGS[fidelity])
    assert isinstance(rule, steprules.STEP_RULES[optimizer])
    assert rule.eps == pytest.approx(eps, rel=1e-12) and float(rule.lr.get_value()) == pytest.approx(0.01)


def test_rmsprop_matches_hand_computed_step():
    p0, g = [1.0, -2.0, 0.5], [0.3, -0.1, 2.0]
    p1, _, _ = one_step(steprules.RMSProp(learning_rate=0.01, decay=0.9), p0, g)
    ms = 0.1 * np.square(g)  # decay * 0 + (1 - decay) g^2
    expected = np.asarray(p0) - 0.01 * np.asarray(g) / np.sqrt(ms)
    np.testing.assert_allclose(p1, expected, rtol=1e-5)


def test_adam_first_step_is_lr_times_sign():
    p1, _, _ = one_step(steprules.Adam(learning_rate=0.01), [1.0, 1.0], [0.5, -3.0])
    np.testing.assert_allclose(p1, [0.99, 1.01], rtol=1e-4)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_nonfinite_step_is_dropped_and_counted(bad):
    rule = steprules.RMSProp(learning_rate=0.01)
    p1, n_bad, rule = one_step(rule, [1.0, 2.0], [0.1, bad])
    np.testing.assert_array_equal(p1, [1.0, 2.0])
    assert n_bad == 1
    assert np.all(rule.state[0].get_value() == 0)  # optimiser state untouched too


def rmsprop_by_hand(p, ms, g, lr=0.01, decay=0.9):
    """(p, ms) after one of steprules.RMSProp's steps (eps negligible here)."""
    ms = decay * ms + (1 - decay) * np.square(g)
    return p - lr * g / np.sqrt(ms), ms


@pytest.mark.parametrize('bad', [np.nan, np.inf])
@pytest.mark.parametrize('flat', [False, True])
def test_zero_gradient_rule_steps_the_other_parameters_and_decays_the_mean_square(bad, flat):
    """nonfinite='zero_gradient' (the released RemoveNotFinite before RMSProp): a NaN or inf in
    one parameter's gradient gives that parameter a zero step and decays its running mean
    square by 0.9, while the other parameter steps and updates its state as usual; the step
    is counted. The same through the data-parallel flat step."""
    a0, b0 = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    a, b = (theano.shared(v.astype('float32'), name=n) for v, n in ((a0, 'a'), (b0, 'b')))
    rule = steprules.RMSProp(learning_rate=0.01, decay=0.9)
    if flat:
        fn, n_bad = steprules.flat_gradient_step([a, b], rule, 'zero_gradient')
        step = lambda ga, gb: fn(np.concatenate([ga, gb]).astype('float32'))  # noqa: E731
    else:
        ga_in, gb_in = T.vector('ga'), T.vector('gb')
        updates, n_bad = steprules.descent_updates(T.sum(a * ga_in) + T.sum(b * gb_in), [a, b], rule,
                                                  'zero_gradient')
        fn = theano.function([ga_in, gb_in], [], updates=updates)
        step = lambda ga, gb: fn(np.float32(ga), np.float32(gb))  # noqa: E731
    ga1, gb1, ga2, gb2 = [0.3, -0.1], [0.2, 0.4], [0.5, 1.0], [bad, 0.1]
    step(ga1, gb1)
    step(ga2, gb2)
    a_want, ms_a = rmsprop_by_hand(*rmsprop_by_hand(a0, 0, np.array(ga1)), np.array(ga2))
    b_want, ms_b = rmsprop_by_hand(b0, 0, np.array(gb1))
    ms = {v.name: v.get_value() for v in rule.state}
    np.testing.assert_allclose(a.get_value(), a_want, rtol=1e-5)
    np.testing.assert_allclose(ms['a.rms'], ms_a, rtol=1e-5)
    np.testing.assert_allclose(b.get_value(), b_want, rtol=1e-5)  # no step at the second call
    np.testing.assert_allclose(ms['b.rms'], 0.9 * ms_b, rtol=1e-5)  # decayed, not updated
    assert int(n_bad.get_value()) == 1


class Quadratic:
    """A tiny model trained by the main loop: noisy least squares, noise from the loop's rng."""

    def __init__(self):
        self.w = theano.shared(np.zeros(3, dtype='float32'), name='w')
        x, noise = T.matrix('x'), T.matrix('noise')
        self.rule = steprules.RMSProp(learning_rate=0.05)
        cost = T.sqr((x + noise) - self.w).mean()
        updates, self.n_bad = steprules.descent_updates(cost, [self.w], self.rule)
        self.fn = theano.function([x, noise], cost, updates=updates)

    def step(self, batch, rng):
        x = batch['features']
        return {'cost': float(self.fn(x, rng.standard_normal(x.shape).astype('float32')))}

    def shared(self):
        out = {p.name: p for p in [self.w] + self.rule.state}
        out.update({'optimizer.lr': self.rule.lr, 'optimizer.n_nonfinite': self.n_bad})
        return out


def make_loop(tmp_path, max_batches, seed=3, stream=None):
    data = np.random.default_rng(0).normal(size=(50, 3)).astype('float32')
    stream = stream or streams.DataStream(streams.ArrayDataset(features=data),
                                          streams.ShuffledScheme(50, 8, seed))  # 7 batches per epoch
    m = Quadratic()
    ext = [E.FinishAfter(max_batches=max_batches), E.LearningRateSchedule(m.rule.lr, 5, 0.9, 1e-3),
           E.JSONLog(str(tmp_path / 'log.jsonl')),
           E.Checkpoint(str(tmp_path / 'ckpt.npz'), every_n_batches=4)]
    return mainloop.MainLoop(m.step, stream, m.shared(), ext, seed, {'args': {'note': 'test'}}), m


def read_log(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.slow  # trains, or runs a subprocess
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    (tmp_path / 'a').mkdir()
    full, m_full = make_loop(tmp_path / 'a', 23)
    full.run()
    (tmp_path / 'b').mkdir()
    first, _ = make_loop(tmp_path / 'b', 10)
    first.run()
    assert first.status['iterations_done'] == 10
    second, m_second = make_loop(tmp_path / 'b', 23)  # fresh objects, as in a new process
    second.load_state_dict(checkpoints.load_checkpoint(str(tmp_path / 'b' / 'ckpt.npz')))
    second.run()
    assert second.status['iterations_done'] == 23
    assert second.status['epochs_done'] == full.status['epochs_done'] == 3
    np.testing.assert_array_equal(m_second.w.get_value(), m_full.w.get_value())
    np.testing.assert_array_equal(m_second.rule.lr.get_value(), m_full.rule.lr.get_value())
    log_a, log_b = read_log(tmp_path / 'a' / 'log.jsonl'), read_log(tmp_path / 'b' / 'log.jsonl')
    assert [r['iteration'] for r in log_b] == list(range(1, 24))  # cut at the checkpoint, then continued
    assert [r['cost'] for r in log_b] == [r['cost'] for r in log_a]


@pytest.mark.slow  # trains, or runs a subprocess
def test_log_is_cut_to_the_checkpoint_after_a_kill(tmp_path):
    """A run killed after its last checkpoint (iteration 8) wrote records 9 and 10 too; the
    resumed run drops them and writes them again from the checkpoint on."""
    first, _ = make_loop(tmp_path, 10)
    first.run()
    saved = checkpoints.load_checkpoint(str(tmp_path / 'ckpt.npz'))
    with open(tmp_path / 'log.jsonl', 'a') as f:
        f.write('{"iteration": 11, "cost": 0.0}\n')  # a record written after the last checkpoint
    saved['status'].update(iterations_done=8, batch_in_epoch=1, log_bytes=checkpoints.log_offset(
        str(tmp_path / 'log.jsonl'), 8))
    second, _ = make_loop(tmp_path, 12)
    second.load_state_dict(saved)
    second.run()
    assert [r['iteration'] for r in read_log(tmp_path / 'log.jsonl')] == list(range(1, 13))


@pytest.mark.slow  # trains, or runs a subprocess
def test_different_seeds_give_different_runs(tmp_path):
    a, ma = make_loop(tmp_path, 5, seed=1)
    a.run()
    b, mb = make_loop(tmp_path, 5, seed=2)
    b.run()
    assert not np.array_equal(ma.w.get_value(), mb.w.get_value())


def test_empty_stream_stops_with_an_error_instead_of_spinning(tmp_path):
    empty = streams.DataStream(streams.ArrayDataset(features=np.zeros((0, 3), 'float32')),
                               streams.ShuffledScheme(0, 8, 0))
    loop, _ = make_loop(tmp_path, 5, stream=empty)
    with pytest.raises(ValueError, match='no minibatch'):
        loop.run()


# ---------------------------------------------------------------- the checkpoint file

def state(w):
    return {'shared': {'w': np.asarray(w, 'float32'), 'optimizer.lr': np.asarray(0.1, 'float32')},
            'status': {'iterations_done': 3, 'log_bytes': 120, 'evaluations': [{'iteration': 2}]},
            'config': {'args': {'dataset': 'heartbeat', 'lr': 0.1}}}


def test_checkpoint_is_an_npz_that_numpy_alone_reads(tmp_path):
    path = str(tmp_path / 'ckpt.npz')
    checkpoints.save_checkpoint(path, state([1, 2, 3]))
    with np.load(path, allow_pickle=False) as f:  # the documented layout, no project code
        meta = json.loads(str(f['meta']))
        assert meta['format'] == checkpoints.CHECKPOINT_FORMAT and meta['status']['iterations_done'] == 3
        np.testing.assert_array_equal(f['shared/w'], [1, 2, 3])
        assert sorted(f.files) == ['meta', 'shared/optimizer.lr', 'shared/w']
    loaded = checkpoints.load_checkpoint(path)
    assert loaded['config'] == state(0)['config'] and loaded['status'] == state(0)['status']


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.npz')
    checkpoints.save_checkpoint(path, state([1, 1]))

    def broken_savez(f, **arrays):
        f.write(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(np, 'savez', broken_savez)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint(path, state([2, 2]))
    monkeypatch.undo()
    np.testing.assert_array_equal(checkpoints.load_checkpoint(path)['shared']['w'], [1, 1])
    assert os.listdir(tmp_path) == ['ckpt.npz']  # no temporary file left behind


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import checkpoints
import numpy as np
real_savez = np.savez
def savez_then_die(f, **arrays):
    real_savez(f, **arrays)
    f.flush()
    f.truncate(f.tell() // 2)  # half a file on disk, then the process is killed
    os.kill(os.getpid(), signal.SIGKILL)
np.savez = savez_then_die
checkpoints.save_checkpoint({path!r}, {{'shared': {{'w': np.full(100000, 2.0, 'float32')}}, 'status': {{}}}})
"""


@pytest.mark.slow  # trains, or runs a subprocess
def test_kill_9_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = str(tmp_path / 'ckpt.npz')
    checkpoints.save_checkpoint(path, state([1, 1]))
    code = KILLED_WRITER.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path=path)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert any('.tmp' in name for name in os.listdir(tmp_path))  # the half-written file
    np.testing.assert_array_equal(checkpoints.load_checkpoint(path)['shared']['w'], [1, 1])
    checkpoints.save_checkpoint(path, state([3, 3]))  # the next save clears the leftover
    assert os.listdir(tmp_path) == ['ckpt.npz']


@pytest.mark.parametrize('content, message', [
    (b'not a checkpoint at all', 'not a checkpoint of this project'),
    (None, 'not a checkpoint of this project'),  # an .npz of someone else's arrays
    ('truncated', 'not a checkpoint of this project, or is damaged'),
])
def test_corrupt_truncated_or_foreign_file_is_one_line_with_its_path(tmp_path, content, message):
    path = str(tmp_path / 'ckpt.npz')
    if content is None:
        np.savez(path, weights=np.zeros(3))
    elif content == 'truncated':
        checkpoints.save_checkpoint(path, state(np.zeros(1000)))
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])
    else:
        open(path, 'wb').write(content)
    with pytest.raises(ValueError) as error:
        checkpoints.load_checkpoint(path)
    assert message in str(error.value) and path in str(error.value) and '\n' not in str(error.value)


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(ValueError, match='cannot read checkpoint .*No such file'):
        checkpoints.load_checkpoint(str(tmp_path / 'nope.npz'))


def old_pickle_checkpoint(path):
    """What the previous format wrote: a pickled dict with the whole per-minibatch log."""
    old = {'shared': {'w': np.arange(3, dtype='float32'), 'optimizer.lr': np.asarray(0.1, 'float32')},
           'status': {'iterations_done': 2, 'epochs_done': 0, 'batch_in_epoch': 2, 'seed': 0,
                      'wall_s': 1.0, 'resumed_from': None},
           'log': [{'iteration': 1, 'cost': 1.0}, {'iteration': 2, 'cost': 0.5, 'heldout_K_bits': -3.0}],
           'config': {'args': {'dataset': 'heartbeat'}}}
    with open(path, 'wb') as f:
        pickle.dump(old, f, protocol=pickle.HIGHEST_PROTOCOL)


def test_old_pickle_checkpoint_loads_with_a_warning_and_converts(tmp_path, capsys):
    path = str(tmp_path / 'checkpoint.pkl')
    old_pickle_checkpoint(path)
    with open(tmp_path / 'log.jsonl', 'w') as f:
        f.write('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3}\n')
    loaded = checkpoints.load_checkpoint(path)
    assert 'pickles can run code' in capsys.readouterr().err
    np.testing.assert_array_equal(loaded['shared']['w'], [0, 1, 2])
    assert loaded['status']['evaluations'] == [{'iteration': 2, 'heldout_K_bits': -3.0}]
    new = checkpoints.convert_checkpoint(path)
    assert new == str(tmp_path / 'checkpoint.npz')
    converted = checkpoints.load_checkpoint(new)
    assert converted['status']['log_bytes'] == len('{"iteration": 1}\n{"iteration": 2}\n')
    np.testing.assert_array_equal(converted['shared']['w'], [0, 1, 2])


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = str(tmp_path / 'checkpoint.pkl')
    with open(path, 'wb') as f:
        pickle.dump({'shared': {}, 'status': {}, 'evil': os.system}, f, protocol=2)
    with pytest.raises(ValueError, match='refusing to load'):
        checkpoints.load_checkpoint(path)


# ---------------------------------------------------------------- schedules and signals

def test_learning_rate_schedule_decays_to_floor():
    lr = theano.shared(np.float32(1e-3))
    ext = E.LearningRateSchedule(lr, **E.RELEASED_SCHEDULE)
    for _ in range(1000):
        ext(None, 'batch')
    np.testing.assert_allclose(lr.get_value(), 1e-4, rtol=1e-3)  # 0.1x after 1000 calls
    ext(None, 'batch')
    assert lr.get_value() == pytest.approx(1e-4)  # floor


def test_exponential_decay_reaches_lr_final_at_the_planned_batch_then_holds():
    lr = theano.shared(np.float32(1e-2))
    ext = E.LearningRateSchedule(lr, **E.exponential_decay(1e-2, 1e-4, 1000, every_n_batches=100))
    for _ in range(10):  # 1000 minibatches
        ext(None, 'batch')
    assert lr.get_value() == pytest.approx(1e-4, rel=1e-4)
    for _ in range(10):  # an extended run holds lr_final
        ext(None, 'batch')
    assert lr.get_value() == pytest.approx(1e-4, rel=1e-4)


@pytest.mark.slow  # trains, or runs a subprocess
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_checkpoint_and_stops(tmp_path, signum):
    loop, m = make_loop(tmp_path, 1000)
    original = loop.step

    def step(batch, rng):
        if loop.status['iterations_done'] == 6:
            os.kill(os.getpid(), signum)
        return original(batch, rng)
    loop.step = step
    loop.run()
    assert loop.interrupted and loop.status['iterations_done'] == 7
    saved = checkpoints.load_checkpoint(str(tmp_path / 'ckpt.npz'))
    assert saved['status']['iterations_done'] == 7
    np.testing.assert_array_equal(saved['shared']['w'], m.w.get_value())
    assert signal.getsignal(signum) is not loop._on_signal  # handlers restored


def test_best_checkpoint_follows_the_highest_monitored_bound(tmp_path):
    """best.npz is written when the newest evaluation is the highest so far, and only then."""
    loop, m = make_loop(tmp_path, 0)
    ext = E.Checkpoint(str(tmp_path / 'last.npz'), best_path=str(tmp_path / 'best.npz'))
    for iteration, K in ((4, -2.0), (8, -1.0), (12, -1.5)):
        loop.status['iterations_done'] = iteration
        loop.status['evaluations'].append({'iteration': iteration, 'heldout_K_bits': K})
        m.w.set_value(np.full(3, iteration, 'float32'))
        ext(loop, 'batch')
    assert checkpoints.load_checkpoint(str(tmp_path / 'last.npz'))['status']['iterations_done'] == 12
    best = checkpoints.load_checkpoint(str(tmp_path / 'best.npz'))
    assert best['status']['iterations_done'] == 8 and (best['shared']['w'] == 8).all()
