"""Schemes, streams and Fuel's HDF5 layout (streams.py)."""
import h5py
import numpy as np
import pytest

import streams


def test_shuffled_scheme_visits_every_example_once_per_epoch():
    scheme = streams.ShuffledScheme(103, 10, seed=5)
    for epoch in range(3):
        batches = scheme.batches(epoch)
        assert [len(b) for b in batches] == [10] * 10 + [3]
        assert sorted(np.concatenate(batches)) == list(range(103))
    assert not np.array_equal(scheme.order(0), scheme.order(1))


def test_shuffled_order_repeats_with_seed_and_changes_without():
    a = streams.ShuffledScheme(50, 7, seed=1).order(4)
    np.testing.assert_array_equal(a, streams.ShuffledScheme(50, 7, seed=1).order(4))
    assert not np.array_equal(a, streams.ShuffledScheme(50, 7, seed=2).order(4))


def test_sequential_scheme_keeps_order():
    batches = streams.SequentialScheme(5, 2).batches(0)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_stream_resumes_inside_an_epoch():
    x = np.arange(24, dtype='uint8').reshape(6, 1, 2, 2)
    stream = streams.DataStream(streams.ArrayDataset(features=x), streams.ShuffledScheme(6, 2, 0))
    full = list(stream.epoch(1))
    tail = list(stream.epoch(1, start=1))
    assert len(full) == 3 and len(tail) == 2
    np.testing.assert_array_equal(full[1]['features'], tail[0]['features'])
    np.testing.assert_array_equal(full[0]['features'], x[stream.scheme.batches(1)[0]])


def test_fuel_layout_round_trip(tmp_path):
    path = str(tmp_path / 'set.hdf5')
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 3, 3)).astype('uint8')
    y = np.arange(7, dtype='uint8')[:, None]
    streams.write_fuel_hdf5(path, {'features': x, 'targets': y}, {'train': (0, 5), 'test': (5, 7)},
                            {'features': ('batch', 'channel', 'height', 'width'),
                             'targets': ('batch', 'index')})
    test = streams.read_fuel_hdf5(path, 'test', ('features', 'targets'))
    np.testing.assert_array_equal(test['features'], x[5:])
    np.testing.assert_array_equal(test['targets'], y[5:])
    with h5py.File(path, 'r') as f:
        table = f.attrs['split']
        assert set(table.dtype.names) == {'split', 'source', 'start', 'stop', 'indices',
                                          'available', 'comment'}
        assert f['features'].dims[0].label == 'batch'
        assert f['features'].dtype == np.uint8


def test_missing_split_and_missing_table_are_reported(tmp_path):
    path = str(tmp_path / 'set.hdf5')
    streams.write_fuel_hdf5(path, {'features': np.zeros((3, 2))}, {'train': (0, 3)})
    with pytest.raises(streams.LayoutError, match="no split 'test'"):
        streams.read_fuel_hdf5(path, 'test')
    plain = str(tmp_path / 'plain.hdf5')
    with h5py.File(plain, 'w') as f:
        f['features'] = np.zeros((3, 2))
    with pytest.raises(streams.LayoutError, match='plain.hdf5.*Fuel'):
        streams.read_fuel_hdf5(plain, 'train')
