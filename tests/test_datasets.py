"""Image data sets (datasets.py) and their archives (archives.py): converters, downloads,
Fuel-layout files, dead leaves, bark, digits.

Everything runs on tiny files the tests write; downloads go to a server on 127.0.0.1.
"""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import socket
import struct
import tarfile
import threading

import h5py
import numpy as np
import pytest
import scipy.optimize

import archives
import datasets
import streams
from archives import DataMissing, FormatError

N_TRAIN, N_TEST = 10, 4


# ---------------------------------------------------------------- tiny raw archives

def write_idx(path, array, magic):
    """A gzipped IDX file written with struct, independently of archives.read_idx."""
    header = struct.pack('>I', magic) + struct.pack('>' + 'I' * array.ndim, *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_mnist(folder, seed=0):
    """The four MNIST files with N_TRAIN + N_TEST random images; returns {split: (x, y)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (('train', N_TRAIN), ('test', N_TEST)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        image_file, label_file = archives.MNIST_RAW[split]
        write_idx(os.path.join(folder, image_file), x, 2051)
        write_idx(os.path.join(folder, label_file), y, 2049)
        out[split] = x, y
    return out


def add_to_tar(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def make_cifar(folder, per_batch=2, n_test=N_TEST, skip=(), batch=None):
    """A CIFAR-10 python tarball, batches pickled with protocol 2 like the original."""
    rng = np.random.default_rng(1)
    names = ['data_batch_{}'.format(i) for i in range(1, 6)] + ['test_batch']
    rows = {}
    with tarfile.open(os.path.join(folder, 'cifar-10-python.tar.gz'), 'w:gz') as tar:
        for name in names:
            if name in skip:
                continue
            n = n_test if name == 'test_batch' else per_batch
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n)]
            payload = batch if batch is not None else pickle.dumps(
                {b'batch_label': name.encode(), b'data': data, b'labels': labels}, protocol=2)
            add_to_tar(tar, 'cifar-10-batches-py/' + name, payload)
            rows[name] = data, labels
    return rows


# ---------------------------------------------------------------- data path

def test_data_path_prefers_cli_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('FUEL_DATA_PATH', os.pathsep.join([str(tmp_path / 'a'),
                                                          str(tmp_path / 'b')]))
    assert datasets.data_path(str(tmp_path / 'c')) == str(tmp_path / 'c')
    assert datasets.data_path() == str(tmp_path / 'a')
    monkeypatch.delenv('FUEL_DATA_PATH')
    default = datasets.data_path()
    assert default == str(tmp_path / '.local' / 'share' / 'diffusion-data')
    assert not os.path.exists(default)  # created on write only


# ---------------------------------------------------------------- MNIST

def test_read_idx_parses_header_and_body(tmp_path):
    x = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / 'x.gz', x, 2051)
    np.testing.assert_array_equal(archives.read_idx(tmp_path / 'x.gz', archives.IDX_IMAGES), x)


def test_read_idx_rejects_wrong_magic_number(tmp_path):
    write_idx(tmp_path / 'labels.gz', np.zeros(7, np.uint8), 2049)
    with pytest.raises(FormatError, match='magic number 2049, expected 2051'):
        archives.read_idx(tmp_path / 'labels.gz', archives.IDX_IMAGES)


def test_read_idx_rejects_short_body_and_non_gzip(tmp_path):
    with gzip.open(tmp_path / 'short.gz', 'wb') as f:
        f.write(struct.pack('>IIII', 2051, 3, 28, 28) + bytes(28 * 28))
    with pytest.raises(FormatError, match='header gives shape'):
        archives.read_idx(tmp_path / 'short.gz', archives.IDX_IMAGES)
    (tmp_path / 'plain.gz').write_bytes(b'not gzip at all')
    with pytest.raises(FormatError, match='not a readable gzip'):
        archives.read_idx(tmp_path / 'plain.gz', archives.IDX_IMAGES)


def test_convert_mnist_writes_fuel_layout(tmp_path):
    raw = make_mnist(tmp_path)
    path = datasets.convert('MNIST', str(tmp_path), str(tmp_path / 'data'))
    assert path == str(tmp_path / 'data' / 'mnist.hdf5')
    for split, (x, y) in raw.items():
        got = streams.read_fuel_hdf5(path, split, ('features', 'targets'))
        assert got['features'].dtype == np.uint8 and got['targets'].dtype == np.uint8
        np.testing.assert_array_equal(got['features'], x[:, None])
        np.testing.assert_array_equal(got['targets'], y[:, None])
    with h5py.File(path, 'r') as f:
        assert f['features'].shape == (N_TRAIN + N_TEST, 1, 28, 28)
        assert [d.label for d in f['features'].dims] == ['batch', 'channel', 'height', 'width']
        assert [d.label for d in f['targets'].dims] == ['batch', 'index']
    assert streams.read_split_table(h5py.File(path, 'r'), path)['test', 'features'] == (10, 14)


def test_convert_mnist_rejects_label_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', np.zeros(N_TEST + 1, np.uint8), 2049)
    with pytest.raises(FormatError, match='4 images but 5 labels'):
        datasets.convert('MNIST', str(tmp_path), str(tmp_path))


def test_convert_without_archives_says_how_to_fetch(tmp_path):
    with pytest.raises(DataMissing, match='python datasets.py fetch MNIST'):
        datasets.convert('MNIST', str(tmp_path), str(tmp_path))


# ---------------------------------------------------------------- CIFAR-10

def test_convert_cifar10_keeps_plane_order_and_labels(tmp_path):
    rows = make_cifar(tmp_path)
    path = datasets.convert('CIFAR10', str(tmp_path), str(tmp_path))
    train = streams.read_fuel_hdf5(path, 'train', ('features', 'targets'))
    test = streams.read_fuel_hdf5(path, 'test', ('features', 'targets'))
    assert train['features'].shape == (N_TRAIN, 3, 32, 32)
    assert test['features'].shape == (N_TEST, 3, 32, 32)
    data, labels = rows['data_batch_3']  # rows 4, 5 of train
    assert np.array_equal(train['features'][4, 0], data[0, :1024].reshape(32, 32))      # red plane
    assert np.array_equal(train['features'][5, 2], data[1, 2048:].reshape(32, 32))      # blue plane
    assert train['targets'][4:6, 0].tolist() == labels
    assert test['targets'][:, 0].tolist() == rows['test_batch'][1]


def test_convert_cifar10_needs_every_batch(tmp_path):
    make_cifar(tmp_path, skip=('test_batch',))
    with pytest.raises(FormatError, match='no test_batch inside'):
        datasets.convert('CIFAR10', str(tmp_path), str(tmp_path))


def test_convert_cifar10_refuses_pickles_that_run_code(tmp_path):
    make_cifar(tmp_path, batch=pickle.dumps({b'data': os.getcwd}, protocol=2))
    with pytest.raises(FormatError, match='refusing to load'):
        datasets.convert('CIFAR10', str(tmp_path), str(tmp_path))


# ---------------------------------------------------------------- downloads

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.routes: path -> (body, the Content-Length to announce)."""

    def do_GET(self):
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, length = self.server.routes[self.path]
        self.send_response(200)
        self.send_header('Content-Length', str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """An HTTP server on 127.0.0.1 at an ephemeral port; set .routes, use .url."""
    for name in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(name, raising=False)
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.routes = {}
    httpd.url = 'http://127.0.0.1:{}'.format(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def refused_url():
    """A base URL on a port nothing listens on."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return 'http://127.0.0.1:{}/'.format(port)


BODY = bytes(range(256)) * 40
SUMS = {'sha256': hashlib.sha256(BODY).hexdigest(), 'md5': hashlib.md5(BODY).hexdigest()}


def test_download_skips_bad_mirrors_then_succeeds(server, refused_url, tmp_path, capsys):
    server.routes = {'/bad/f.bin': (BODY[::-1], len(BODY)),
                     '/cut/f.bin': (BODY[:1000], len(BODY)),
                     '/good/f.bin': (BODY, len(BODY))}
    mirrors = [refused_url, server.url + '/missing/', server.url + '/bad/',
               server.url + '/cut/', server.url + '/good/']
    path = archives.download('f.bin', mirrors, SUMS, str(tmp_path))
    assert open(path, 'rb').read() == BODY
    assert os.listdir(tmp_path) == ['f.bin']  # no temporary file left
    failures = [line for line in capsys.readouterr().err.splitlines() if 'download failed' in line]
    assert len(failures) == 4
    assert refused_url in failures[0] and 'refused' in failures[0].lower()
    assert 'HTTP 404' in failures[1]
    assert '/bad/' in failures[2] and 'sha256 is' in failures[2]
    assert '/cut/' in failures[3] and 'truncated: 1000 of 10240 bytes' in failures[3]


def test_download_deletes_bad_copies_and_fails_when_no_mirror_is_good(server, tmp_path):
    server.routes = {'/bad/f.bin': (BODY[::-1], len(BODY)), '/cut/f.bin': (BODY[:10], len(BODY))}
    with pytest.raises(archives.DownloadError, match='no mirror served an intact copy'):
        archives.download('f.bin', [server.url + '/bad/', server.url + '/cut/'], SUMS,
                          str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_download_checks_every_listed_checksum(server, tmp_path):
    server.routes = {'/f.bin': (BODY, len(BODY))}
    with pytest.raises(archives.DownloadError):
        archives.download('f.bin', [server.url], dict(SUMS, md5='0' * 32), str(tmp_path))


def test_fetch_downloads_verifies_and_converts(server, refused_url, tmp_path):
    raw = make_mnist(tmp_path)
    files = {}
    for split in ('train', 'test'):
        for name in archives.MNIST_RAW[split]:
            body = (tmp_path / name).read_bytes()
            server.routes['/mnist/' + name] = (body, len(body))
            files[name] = {'sha256': hashlib.sha256(body).hexdigest()}
    data = tmp_path / 'data'
    path = datasets.fetch('MNIST', str(data), mirrors=[refused_url, server.url + '/mnist/'],
                          files=files)
    assert path == str(data / 'mnist.hdf5')
    np.testing.assert_array_equal(datasets.load_images('MNIST', 'test', str(data)),
                                  raw['test'][0][:, None])
    # Verified archives already there are not downloaded again: no mirror is needed.
    os.remove(path)
    assert datasets.fetch('MNIST', str(data), mirrors=[], files=files) == path


def test_published_checksums_are_well_formed():
    lengths = {'sha256': 64, 'md5': 32}
    for spec in archives.DOWNLOADS.values():
        assert spec['mirrors']
        for checksums in spec['files'].values():
            for algorithm, value in checksums.items():
                assert re.fullmatch('[0-9a-f]{{{}}}'.format(lengths[algorithm]), value)


# ---------------------------------------------------------------- loading and errors

def test_missing_mnist_says_which_command_makes_it(tmp_path):
    with pytest.raises(DataMissing) as error:
        datasets.load_images('MNIST', 'train', str(tmp_path))
    message = str(error.value)
    assert 'python datasets.py fetch MNIST' in message and str(tmp_path) in message
    assert 'python datasets.py convert MNIST --raw' in message and '\n' not in message
    assert isinstance(error.value, ValueError)


def test_corrupt_hdf5_gives_layout_error_naming_the_path(tmp_path):
    path = tmp_path / 'mnist.hdf5'
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(streams.LayoutError, match=re.escape(str(path))):
        datasets.load_images('MNIST', 'train', str(tmp_path))


def test_wrong_features_give_layout_error_saying_what_was_expected(tmp_path):
    path = str(tmp_path / 'mnist.hdf5')
    streams.write_fuel_hdf5(path, {'features': np.zeros((5, 28, 28), np.float32)},
                            {'train': (0, 4), 'test': (4, 5)})
    with pytest.raises(streams.LayoutError, match=re.escape('expected uint8 (N, 1, 28, 28)')):
        datasets.load_images('MNIST', 'train', str(tmp_path))


def test_split_table_without_its_dataset_gives_layout_error(tmp_path):
    path = str(tmp_path / 'mnist.hdf5')
    streams.write_fuel_hdf5(path, {'features': np.zeros((5, 1, 28, 28), np.uint8)},
                            {'train': (0, 4), 'test': (4, 5)})
    with h5py.File(path, 'a') as f:
        del f['features']
    with pytest.raises(streams.LayoutError, match='no such dataset'):
        datasets.load_images('MNIST', 'train', str(tmp_path))


def test_load_images_rejects_unknown_names_splits_and_options(tmp_path):
    with pytest.raises(ValueError, match='unknown data set'):
        datasets.load_images('SVHN', 'train', str(tmp_path))
    with pytest.raises(ValueError, match='unknown split'):
        datasets.load_images('digits', 'valid')
    with pytest.raises(ValueError, match='takes no options'):
        datasets.load_images('MNIST', 'train', str(tmp_path), size=3)


# ---------------------------------------------------------------- dead leaves

def fit_power_exponent(r, rmin, rmax):
    """Maximum-likelihood a for the density (a - 1) r^-a / (rmin^(1-a) - rmax^(1-a))."""
    mean_log = np.log(r).mean()

    def negative_log_likelihood(a):
        return -(np.log(a - 1) - np.log(rmin ** (1 - a) - rmax ** (1 - a)) - a * mean_log)
    return scipy.optimize.minimize_scalar(negative_log_likelihood, bounds=(1.1, 6),
                                          method='bounded').x


def test_deadleaves_radii_follow_r_to_the_minus_3():
    r = datasets.deadleaves_radii(np.random.default_rng(0), 200000, 1.0, 32.0)
    assert r.min() >= 1.0 and r.max() <= 32.0
    assert abs(fit_power_exponent(r, 1.0, 32.0) - 3) < 0.03  # standard error about 0.005


def test_deadleaves_image_is_covered():
    x = datasets.deadleaves_image(np.random.default_rng(0), 32, 1.0, 16.0)
    assert np.all((x >= 0) & (x <= 1))  # no pixel left uncovered (NaN)
    assert len(np.unique(x)) > 20


def test_deadleaves_image_paints_disks_of_the_drawn_radius():
    x = datasets.deadleaves_image(np.random.default_rng(0), 64, 3.45, 3.45)
    spans = []
    for level in np.unique(x):  # each visible part lies inside one disk of radius 3.45
        rows, cols = np.nonzero(x == level)
        spans += [rows.ptp(), cols.ptp()]
    assert len(spans) > 20 and max(spans) == 6  # pixel centres 6 apart fit, 7 do not


def test_deadleaves_repeat_from_seed_and_differ_across_seeds():
    a = datasets.deadleaves(3, size=16, seed=5)
    assert a.shape == (3, 1, 16, 16) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, datasets.deadleaves(3, size=16, seed=5))
    assert not np.array_equal(a, datasets.deadleaves(3, size=16, seed=6))
    assert not np.array_equal(a[0], a[1])


def test_deadleaves_are_cached_with_fixed_splits(tmp_path, monkeypatch):
    train = datasets.load_images('deadleaves', 'train', str(tmp_path), size=16, count=20, seed=3)
    test = datasets.load_images('deadleaves', 'test', str(tmp_path), size=16, count=20, seed=3)
    assert train.shape == (18, 1, 16, 16) and test.shape == (2, 1, 16, 16)
    assert os.path.exists(tmp_path / 'deadleaves_16_20_3.hdf5')
    np.testing.assert_array_equal(np.concatenate([train, test]), datasets.deadleaves(20, 16, 3))

    def fail(*args):
        raise AssertionError('regenerated instead of reading the cache')
    monkeypatch.setattr(datasets, 'deadleaves', fail)
    np.testing.assert_array_equal(
        datasets.load_images('deadleaves', 'train', str(tmp_path), size=16, count=20, seed=3),
        train)


# ---------------------------------------------------------------- bark

def tiles(images, patch, stride):
    return [x[t:t + patch, s:s + patch] for x in images
            for t in range(0, x.shape[0] - patch + 1, stride)
            for s in range(0, x.shape[1] - patch + 1, stride)]


def test_bark_builtin_splits_each_texture_by_region(capsys):
    import skimage.data
    images = [skimage.data.grass(), skimage.data.gravel(), skimage.data.brick()]
    train = datasets.load_images('bark', 'train')
    test = datasets.load_images('bark', 'test')
    assert 'scikit-image' in capsys.readouterr().err  # a note for people: stderr
    assert train.shape == (3 * 6 * 8, 1, 64, 64) and test.shape == (3 * 2 * 8, 1, 64, 64)
    assert train.dtype == test.dtype == np.uint8
    np.testing.assert_array_equal(train[:, 0], tiles([x[:384] for x in images], 64, 64))
    np.testing.assert_array_equal(test[:, 0], tiles([x[384:] for x in images], 64, 64))
    # With a fine stride, no training patch reaches into the bottom quarter.
    fine = datasets.bark(patch=32, stride=8)
    np.testing.assert_array_equal(fine['train'][:, 0], tiles([x[:384] for x in images], 32, 8))
    np.testing.assert_array_equal(fine['test'][:, 0], tiles([x[384:] for x in images], 32, 8))


def test_bark_folder_holds_out_whole_images(tmp_path):
    import skimage.io
    values = [10 * (i + 1) for i in range(8)]
    for i, v in enumerate(values):
        folder = tmp_path / 'T0{}'.format(1 + i // 4)
        folder.mkdir(exist_ok=True)
        image = np.full((40, 50, 3), v, np.uint8) if i == 0 else np.full((40, 50), v, np.uint8)
        skimage.io.imsave(folder / 'img{}.png'.format(i), image, check_contrast=False)
    out = datasets.bark(str(tmp_path), patch=16, stride=8)
    assert out['train'].shape == (6 * 4 * 5, 1, 16, 16)  # 6 images, 4 x 5 patches each
    assert out['test'].shape == (2 * 4 * 5, 1, 16, 16)
    assert set(np.unique(out['test'])) == {values[3], values[7]}
    assert set(np.unique(out['train'])) == set(values) - {values[3], values[7]}


# ---------------------------------------------------------------- digits

def test_digits_split_is_a_fixed_partition():
    from sklearn.datasets import load_digits
    everything = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    train = datasets.load_images('digits', 'train')
    test = datasets.load_images('digits', 'test')
    assert train.shape == (1500, 1, 8, 8) and test.shape == (297, 1, 8, 8)
    assert train.dtype == np.uint8 and train.max() == 255 and train.min() == 0
    assert sorted(x.tobytes() for x in np.concatenate([train, test])[:, 0]) == \
        sorted(x.tobytes() for x in everything)
    np.testing.assert_array_equal(test, datasets.load_images('digits', 'test'))


# ---------------------------------------------------------------- command line

def test_command_line_reports_user_errors_in_one_line(tmp_path, capsys):
    assert datasets.main(['info', 'MNIST', '--data-path', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'python datasets.py fetch MNIST' in err
    assert 'Traceback' not in err
    write_idx(tmp_path / 'train-images-idx3-ubyte.gz', np.zeros(3, np.uint8), 2049)
    assert datasets.main(['convert', 'MNIST', '--raw', str(tmp_path),
                          '--data-path', str(tmp_path)]) == 2
    assert 'magic number 2049' in capsys.readouterr().err


@pytest.mark.parametrize('command', [['info', 'deadleaves'], ['fetch', 'MNIST'], ['convert', 'MNIST', '--raw', '.']])
def test_a_data_path_that_is_a_file_is_refused_before_anything_is_made(tmp_path, capsys, command):
    path = tmp_path / 'a_file'
    path.write_bytes(b'kept as it is')
    assert datasets.main(command + ['--data-path', str(path)]) == 2
    assert capsys.readouterr().err == ('datasets.py: error: the data path {} is a file, not a folder; give a folder '
                                       'with --data-path\n'.format(path))
    assert path.read_bytes() == b'kept as it is' and os.listdir(tmp_path) == ['a_file']


@pytest.mark.parametrize('size, message', [
    ('0', "--image-size 0: must be an integer >= 2 (the disks' radii go up to half of it)"),
    ('1000000000000', '--image-size 1000000000000: 10,000 images need at least '),
])
def test_dead_leaves_of_an_absurd_size_are_refused_before_anything_is_made(tmp_path, capsys, size, message):
    assert datasets.main(['info', 'deadleaves', '--image-size', size, '--data-path', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('datasets.py: error: ' + message) and err.count('\n') == 1
    assert os.listdir(tmp_path) == []


def test_a_long_generation_says_how_long_and_an_existing_file_says_nothing(tmp_path):
    assert datasets.deadleaves_size_problem(400, 10000, str(tmp_path)) == (None, (
        '--image-size 400: about 52 min of generating 10,000 images (0.008 s per 64x64 image, scaled by the pixels)'))
    (tmp_path / 'deadleaves_400_10000_1.hdf5').write_bytes(b'')
    assert datasets.deadleaves_size_problem(400, 10000, str(tmp_path)) == (None, None)


def test_command_line_converts_and_describes(tmp_path, capsys):
    make_mnist(tmp_path)
    assert datasets.main(['convert', 'MNIST', '--raw', str(tmp_path),
                          '--data-path', str(tmp_path)]) == 0
    assert datasets.main(['info', 'MNIST', '--data-path', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / 'mnist.hdf5') in out
    assert 'train: (10, 1, 28, 28) uint8' in out and 'test: (4, 1, 28, 28) uint8' in out
    assert datasets.main(['info', 'mnist', '--data-path', str(tmp_path)]) == 0  # Fuel's spelling
    assert 'MNIST: ' + str(tmp_path / 'mnist.hdf5') in capsys.readouterr().out


def test_data_set_names_in_any_case_everywhere(capsys):
    assert datasets.canonical_name('cifar-10') == 'CIFAR10' and datasets.canonical_name('Dead_Leaves') == 'deadleaves'
    np.testing.assert_array_equal(datasets.load_images('DIGITS', 'test'), datasets.load_images('digits', 'test'))
    with pytest.raises(SystemExit):
        datasets.main(['info', 'imagenet'])
    assert "unknown data set 'imagenet'; choose one of: MNIST, CIFAR10" in capsys.readouterr().err
