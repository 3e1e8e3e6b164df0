"""Step rules, the main loop, checkpoints and resume (training.py, extensions.py)."""
import os
import pickle

import numpy as np
import pytest
import theano
import theano.tensor as T

import extensions as E
import streams
import training


def one_step(rule, p0, g_value):
    p = theano.shared(np.asarray(p0, dtype='float32'), name='p')
    g = T.vector('g')
    cost = T.sum(p * g)  # d cost / d p = g
    updates, n_bad = training.descent_updates(cost, [p], rule)
    f = theano.function([g], [], updates=updates)
    f(np.asarray(g_value, dtype='float32'))
    return p.get_value(), int(n_bad.get_value()), rule


def test_rmsprop_matches_hand_computed_step():
    p0, g = [1.0, -2.0, 0.5], [0.3, -0.1, 2.0]
    p1, _, _ = one_step(training.RMSProp(learning_rate=0.01, decay=0.9), p0, g)
    ms = 0.1 * np.square(g)  # decay * 0 + (1 - decay) g^2
    expected = np.asarray(p0) - 0.01 * np.asarray(g) / np.sqrt(ms)
    np.testing.assert_allclose(p1, expected, rtol=1e-5)


def test_adam_first_step_is_lr_times_sign():
    p1, _, _ = one_step(training.Adam(learning_rate=0.01), [1.0, 1.0], [0.5, -3.0])
    np.testing.assert_allclose(p1, [0.99, 1.01], rtol=1e-4)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_nonfinite_step_is_dropped_and_counted(bad):
    rule = training.RMSProp(learning_rate=0.01)
    p1, n_bad, rule = one_step(rule, [1.0, 2.0], [0.1, bad])
    np.testing.assert_array_equal(p1, [1.0, 2.0])
    assert n_bad == 1
    assert np.all(rule.state[0].get_value() == 0)  # optimiser state untouched too


class Quadratic:
    """A tiny model trained by the main loop: noisy least squares, noise from the loop's rng."""

    def __init__(self):
        self.w = theano.shared(np.zeros(3, dtype='float32'), name='w')
        x, noise = T.matrix('x'), T.matrix('noise')
        self.rule = training.RMSProp(learning_rate=0.05)
        cost = T.sqr((x + noise) - self.w).mean()
        updates, self.n_bad = training.descent_updates(cost, [self.w], self.rule)
        self.fn = theano.function([x, noise], cost, updates=updates)

    def step(self, batch, rng):
        x = batch['features']
        return {'cost': float(self.fn(x, rng.standard_normal(x.shape).astype('float32')))}

    def shared(self):
        out = {p.name: p for p in [self.w] + self.rule.state}
        out.update({'optimizer.lr': self.rule.lr, 'optimizer.n_nonfinite': self.n_bad})
        return out


def make_loop(tmp_path, max_batches, seed=3):
    data = np.random.default_rng(0).normal(size=(50, 3)).astype('float32')
    stream = streams.DataStream(streams.ArrayDataset(features=data),
                                streams.ShuffledScheme(50, 8, seed))  # 7 batches per epoch
    m = Quadratic()
    ext = [E.FinishAfter(max_batches=max_batches), E.LearningRateSchedule(m.rule.lr, every_n_batches=5),
           E.JSONLog(str(tmp_path / 'log.jsonl')),
           E.Checkpoint(str(tmp_path / 'ckpt.pkl'), every_n_batches=4)]
    return training.MainLoop(m.step, stream, m.shared(), ext, seed), m


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    (tmp_path / 'a').mkdir()
    full, m_full = make_loop(tmp_path / 'a', 23)
    full.run()
    (tmp_path / 'b').mkdir()
    first, _ = make_loop(tmp_path / 'b', 10)
    first.run()
    assert first.status['iterations_done'] == 10
    second, m_second = make_loop(tmp_path / 'b', 23)  # fresh objects, as in a new process
    second.load_state_dict(training.load_checkpoint(str(tmp_path / 'b' / 'ckpt.pkl')))
    second.run()
    assert second.status['iterations_done'] == 23
    assert second.status['epochs_done'] == full.status['epochs_done'] == 3
    np.testing.assert_array_equal(m_second.w.get_value(), m_full.w.get_value())
    np.testing.assert_array_equal(m_second.rule.lr.get_value(), m_full.rule.lr.get_value())
    assert [r['cost'] for r in second.log] == [r['cost'] for r in full.log]
    lines = (tmp_path / 'b' / 'log.jsonl').read_text().splitlines()
    assert len(lines) == 23  # log rewritten from the checkpoint, then continued


def test_different_seeds_give_different_runs(tmp_path):
    a, ma = make_loop(tmp_path, 5, seed=1)
    a.run()
    b, mb = make_loop(tmp_path, 5, seed=2)
    b.run()
    assert not np.array_equal(ma.w.get_value(), mb.w.get_value())


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pkl')
    training.save_checkpoint(path, {'shared': {'w': 1}, 'status': {}, 'log': []})

    def broken_dump(obj, f, protocol=None):
        f.write(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(pickle, 'dump', broken_dump)
    with pytest.raises(OSError):
        training.save_checkpoint(path, {'shared': {'w': 2}, 'status': {}, 'log': []})
    monkeypatch.undo()
    assert training.load_checkpoint(path)['shared']['w'] == 1
    assert os.listdir(tmp_path) == ['ckpt.pkl']  # no temporary file left behind


def test_corrupt_checkpoint_is_reported_with_its_path(tmp_path):
    path = tmp_path / 'ckpt.pkl'
    path.write_bytes(b'not a pickle')
    with pytest.raises(ValueError, match='ckpt.pkl'):
        training.load_checkpoint(str(path))


def test_learning_rate_schedule_decays_to_floor():
    lr = theano.shared(np.float32(1e-3))
    ext = E.LearningRateSchedule(lr)
    for _ in range(1000):
        ext(None, 'batch')
    np.testing.assert_allclose(lr.get_value(), 1e-4, rtol=1e-3)  # 0.1x after 1000 calls
    ext(None, 'batch')
    assert lr.get_value() == pytest.approx(1e-4)  # floor


def test_sigint_writes_checkpoint_and_stops(tmp_path):
    loop, m = make_loop(tmp_path, 1000)
    original = loop.step

    def step(batch, rng):
        if loop.status['iterations_done'] == 6:
            loop._on_sigint(2, None)
        return original(batch, rng)
    loop.step = step
    loop.run()
    assert loop.interrupted and loop.status['iterations_done'] == 7
    saved = training.load_checkpoint(str(tmp_path / 'ckpt.pkl'))
    assert saved['status']['iterations_done'] == 7
    np.testing.assert_array_equal(saved['shared']['w'], m.w.get_value())
