"""Data files made here (dead leaves generated, MNIST and CIFAR-10 converted) keep their
SHA-256 beside them, and a file damaged since is refused in one line saying what to do; without
it, a file is checked against the SHA-256 recorded for its name, or (Fuel's) for its layout."""
import os

import numpy as np
import pytest

import archives
import datasets
import streams
import train


def damage(path, offset_fraction=0.5, n_bytes=2000):
    """Overwrite n_bytes in the middle of the file, as a failing disk or a stray write would."""
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.seek(int(size * offset_fraction))
        f.write(np.random.default_rng(0).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())


def test_generated_dead_leaves_keep_their_checksum_and_a_damaged_file_is_refused(tmp_path):
    options = dict(size=16, count=20, seed=3)
    train_x = datasets.load_images('deadleaves', 'train', str(tmp_path), **options)
    path = str(tmp_path / 'deadleaves_16_20_3.hdf5')
    digest = archives.digests(path, ['sha256'])['sha256']
    assert open(path + '.sha256').read() == '{}  deadleaves_16_20_3.hdf5\n'.format(digest)  # sha256sum's format
    np.testing.assert_array_equal(datasets.load_images('deadleaves', 'train', str(tmp_path), **options), train_x)
    damage(path)
    with pytest.raises(archives.ChecksumError) as error:
        datasets.load_images('deadleaves', 'train', str(tmp_path), **options)
    message = str(error.value)
    assert message == ('{0} is damaged: its SHA-256 is not the one kept in {0}.sha256 when it was made; delete it '
                       'and run again to generate it anew'.format(path))
    os.remove(path)  # what the message says to do
    np.testing.assert_array_equal(datasets.load_images('deadleaves', 'train', str(tmp_path), **options), train_x)


@pytest.mark.slow  # starts train.py
def test_a_converted_file_that_is_damaged_stops_a_run_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8) for s, n in (('train', 60), ('test', 10))}
    path = str(tmp_path / 'mnist.hdf5')
    datasets.write_images(path, images, {s: np.zeros(len(x), np.uint8) for s, x in images.items()})  # as convert
    assert os.path.exists(path + '.sha256')
    np.testing.assert_array_equal(datasets.load_images('MNIST', 'test', str(tmp_path)), images['test'])
    damage(path, 0.7)
    with pytest.raises(SystemExit) as stop:
        train.main(['--dataset', 'mnist', '--data-path', str(tmp_path), '--max-batches', '1',
                    '--output-dir', str(tmp_path / 'runs'), '--model-args', 'T=10,n_hidden_dense_lower=8'])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        '{} is damaged: its SHA-256 is not the one kept in {}.sha256 when it was made; delete it and make it '
        'again: python datasets.py fetch MNIST (or convert)'.format(path, path)), lines
    assert not (tmp_path / 'runs').exists()


def fuel_mnist(tmp_path, shape=(1, 28, 28)):
    """An mnist.hdf5 as Fuel's converter left it: no .sha256 beside it; its train images."""
    rng = np.random.default_rng(1)
    images = {s: rng.integers(0, 256, (n,) + shape, dtype=np.uint8) for s, n in (('train', 6), ('test', 4))}
    path = str(tmp_path / 'mnist.hdf5')
    datasets.write_images(path, images)
    os.remove(path + '.sha256')
    return path, images['train']


def test_a_fuel_file_without_a_checksum_is_read_after_its_layout_checks_with_one_line(tmp_path, capsys):
    path, train_x = fuel_mnist(tmp_path)
    np.testing.assert_array_equal(datasets.load_images('MNIST', 'train', str(tmp_path)), train_x)
    assert capsys.readouterr().err == ('{0} has no {0}.sha256 (made by Fuel, or before checksums were kept): its '
                                       'layout is checked, not its checksum\n'.format(path))
    fuel_mnist(tmp_path, shape=(1, 16, 16))
    with pytest.raises(streams.LayoutError):
        datasets.load_images('MNIST', 'train', str(tmp_path))


def test_a_generated_file_without_its_checksum_file_is_checked_against_the_recorded_checksum(tmp_path, capsys):
    path = datasets.mnist5k_file(str(tmp_path))
    os.remove(path + '.sha256')
    assert datasets.load_images('mnist5k', 'valid', str(tmp_path)).shape == (500, 1, 28, 28)
    assert capsys.readouterr().err == ''
    damage(path)
    with pytest.raises(archives.ChecksumError) as error:
        datasets.load_images('mnist5k', 'valid', str(tmp_path))
    assert str(error.value) == (
        '{0} has no {0}.sha256 and its SHA-256 is not the one recorded for it (datasets.RECORDED_FILES); move it '
        'away and make it again: python datasets.py info mnist5k --data-path {1}'.format(path, tmp_path))


def test_a_recorded_file_that_differs_is_refused_in_one_line_and_kept(tmp_path, capsys):
    path = tmp_path / 'deadleaves_16_10000_1.hdf5'
    datasets.write_images(str(path), {s: np.zeros((n, 1, 16, 16), np.uint8) for s, n in (('train', 9), ('test', 1))})
    os.remove(str(path) + '.sha256')
    kept = path.read_bytes()
    assert datasets.main(['info', 'deadleaves', '--image-size', '16', '--data-path', str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        'datasets.py: error: {0} has no {0}.sha256 and its SHA-256 is not the one recorded for it '
        '(datasets.RECORDED_FILES); move it away and make it again: python datasets.py info deadleaves '
        '--image-size 16 --data-path {1}\n'.format(path, tmp_path))
    assert path.read_bytes() == kept and os.listdir(tmp_path) == [path.name]


def test_a_generated_file_with_neither_checksum_is_refused(tmp_path):
    datasets.load_images('deadleaves', 'train', str(tmp_path), size=16, count=20, seed=3)
    path = str(tmp_path / 'deadleaves_16_20_3.hdf5')
    os.remove(path + '.sha256')
    with pytest.raises(archives.ChecksumError) as error:
        datasets.load_images('deadleaves', 'train', str(tmp_path), size=16, count=20, seed=3)
    assert str(error.value) == ('{0} has no {0}.sha256 and no SHA-256 is recorded for it; delete it and run again '
                                'to generate it anew'.format(path))
