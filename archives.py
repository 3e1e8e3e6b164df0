"""The original archives of MNIST and CIFAR-10, which Fuel converted: where to download
them, their published checksums, and readers that turn them into arrays.

    download_archives('MNIST', folder)      # fetch and verify, skipping good copies
    read_archives('MNIST', folder)          # {split: (images uint8 (n, C, H, W), labels)}

datasets.py writes the arrays into Fuel's HDF5 layout (`python datasets.py fetch NAME`).
"""
import gzip
import hashlib
import http.client
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np

import meter
import rundirs

SPLITS = ('train', 'test')

# The archives Fuel converted, where to get them, and their published checksums: MNIST's
# SHA-256 as torchvision, TensorFlow and Keras list them; CIFAR-10's MD5 from its home
# page (www.cs.toronto.edu/~kriz/cifar.html) and its SHA-256 from Keras.
DOWNLOADS = {
    'MNIST': {
        'hdf5': 'mnist.hdf5',
        'shape': (1, 28, 28),
        'mirrors': ['https://ossci-datasets.s3.amazonaws.com/mnist/',     # torchvision's copy
                    'https://storage.googleapis.com/cvdf-datasets/mnist/',  # TensorFlow's copy
                    'http://yann.lecun.com/exdb/mnist/'],  # the original; often refuses
        'files': {
            'train-images-idx3-ubyte.gz':
                {'sha256': '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609'},
            'train-labels-idx1-ubyte.gz':
                {'sha256': '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c'},
            't10k-images-idx3-ubyte.gz':
                {'sha256': '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6'},
            't10k-labels-idx1-ubyte.gz':
                {'sha256': 'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6'},
        },
    },
    'CIFAR10': {
        'hdf5': 'cifar10.hdf5',
        'shape': (3, 32, 32),
        'mirrors': ['https://www.cs.toronto.edu/~kriz/'],
        'files': {
            'cifar-10-python.tar.gz':
                {'md5': 'c58f30108f718f92721af3b95e74349a',
                 'sha256': '6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce'},
        },
    },
}


class DataMissing(ValueError):
    """A data file is absent; the message is one line saying which command makes it."""


class FormatError(ValueError):
    """A raw archive (IDX file, CIFAR-10 tarball) that is not what its name says."""


class ChecksumError(ValueError):
    """A downloaded file whose checksum is not the published one."""


class DownloadError(OSError):
    """A download that failed, or a file that no mirror served intact."""


def download_spec(name):
    """The DOWNLOADS entry of `name`."""
    if name not in DOWNLOADS:
        raise ValueError('{!r} is not downloaded; choose from {}'.format(
            name, ', '.join(DOWNLOADS)))
    return DOWNLOADS[name]


# ---------------------------------------------------------------- MNIST and CIFAR-10 archives

IDX_IMAGES, IDX_LABELS = 2051, 2049  # IDX magic numbers 0x0803, 0x0801: unsigned bytes, 3 or 1 dims
MNIST_RAW = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
             'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
CIFAR10_ARCHIVE = 'cifar-10-python.tar.gz'
CIFAR10_BATCHES = {'train': ['data_batch_{}'.format(i) for i in range(1, 6)],
                   'test': ['test_batch']}


def raw_file(raw_dir, filename, name):
    """Path of archive `filename` of data set `name` in `raw_dir`; DataMissing if absent."""
    path = os.path.join(raw_dir, filename)
    if not os.path.exists(path):
        raise DataMissing('{} not found in {}; download it with: python datasets.py fetch {}'
                          .format(filename, raw_dir, name))
    return path


def read_idx(path, magic):
    """The uint8 array in a gzipped IDX file (LeCun's MNIST format).

    Layout: a big-endian int32 magic number 0x08nn (0x08: unsigned bytes, nn: the number
    of dimensions), one big-endian int32 size per dimension, then the bytes in C order.
    """
    try:
        with gzip.open(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise FormatError('{}: not a readable gzip file ({})'.format(path, e))
    ndim = magic & 0xff
    header = 4 * (1 + ndim)
    found = int.from_bytes(data[:4], 'big')
    if found != magic:
        raise FormatError('{}: magic number {}, expected {} (IDX {})'.format(
            path, found, magic, 'images' if magic == IDX_IMAGES else 'labels'))
    if len(data) < header:
        raise FormatError('{}: {} bytes, shorter than its {}-byte header'.format(
            path, len(data), header))
    shape = tuple(int(n) for n in np.frombuffer(data, '>i4', ndim, 4))
    body = np.frombuffer(data, np.uint8, offset=header)
    if body.size != np.prod(shape):
        raise FormatError('{}: the header gives shape {} ({} bytes) but {} bytes follow'.format(
            path, shape, np.prod(shape), body.size))
    return body.reshape(shape)


def read_mnist(raw_dir):
    """{split: (images uint8 (n, 1, H, W), labels uint8 (n,))} from the four IDX files."""
    out = {}
    for split, (image_file, label_file) in MNIST_RAW.items():
        images = read_idx(raw_file(raw_dir, image_file, 'MNIST'), IDX_IMAGES)
        labels = read_idx(raw_file(raw_dir, label_file, 'MNIST'), IDX_LABELS)
        if len(images) != len(labels):
            raise FormatError('{}: {} images but {} labels in {}'.format(
                raw_dir, len(images), len(labels), label_file))
        out[split] = images[:, None], labels
    return out


def read_cifar10(raw_dir):
    """{split: (images uint8 (n, 3, 32, 32), labels uint8 (n,))} from the python tarball.

    The tarball holds pickles data_batch_1..5 (train) and test_batch, each a dict with
    b'data', uint8 (n, 3072) rows of the red, green and blue 32x32 planes, and
    b'labels', n ints.
    """
    path = raw_file(raw_dir, CIFAR10_ARCHIVE, 'CIFAR10')
    out = {}
    try:
        with tarfile.open(path, 'r:gz') as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            for split, names in CIFAR10_BATCHES.items():
                batches = [cifar10_batch(tar, members, name, path) for name in names]
                out[split] = tuple(np.concatenate(part) for part in zip(*batches))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FormatError('{}: not a readable tar.gz archive ({})'.format(path, e))
    return out


def cifar10_batch(tar, members, name, path):
    """(images uint8 (n, 3, 32, 32), labels uint8 (n,)) of one pickled batch in the tarball."""
    if name not in members:
        raise FormatError('{}: no {} inside; expected data_batch_1..5 and test_batch'.format(
            path, name))
    try:
        batch = rundirs.ArrayUnpickler(tar.extractfile(members[name]), encoding='bytes').load()
        data, labels = np.asarray(batch[b'data']), np.asarray(batch[b'labels'])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
        raise FormatError('{}: {} is not a CIFAR-10 batch ({})'.format(path, name, e))
    if data.dtype != np.uint8 or data.shape[1:] != (3 * 32 * 32,) or labels.shape != data.shape[:1]:
        raise FormatError('{}: {} holds data {} {} and {} labels; expected uint8 (n, 3072) and '
                          'n labels'.format(path, name, data.dtype, data.shape, labels.size))
    return data.reshape(-1, 3, 32, 32), labels.astype(np.uint8)

def read_archives(name, raw_dir):
    """{split: (images uint8 (n, C, H, W), labels uint8 (n,))} from the archives of `name`
    ('MNIST', 'CIFAR10') in `raw_dir`."""
    download_spec(name)
    return {'MNIST': read_mnist, 'CIFAR10': read_cifar10}[name](raw_dir)



USER_AGENT = 'diffusion-reproduction (python urllib)'


def digests(path, algorithms):
    """{algorithm: hex digest} of the file at `path`."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            for h in hashes.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashes.items()}


def verify(path, checksums):
    """Raise ChecksumError unless the file's digests are `checksums` ({algorithm: hex})."""
    found = digests(path, checksums)
    for algorithm, expected in checksums.items():
        if found[algorithm] != expected.lower():
            raise ChecksumError('{} is {}, expected {}'.format(
                algorithm, found[algorithm], expected))


def download(filename, mirrors, checksums, folder, timeout=60):
    """Download `filename` into `folder` from the first of `mirrors` (base URLs) that serves
    an intact copy, checked against `checksums` ({algorithm: hex}); returns its path.

    Each copy goes to a temporary file, renamed only once verified; a failed copy (refused,
    truncated, wrong checksum) is deleted and reported in one line on stderr, and the next
    mirror is tried.
    """
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, filename)
    for base in mirrors:
        url = base.rstrip('/') + '/' + filename
        fd, part = tempfile.mkstemp(prefix=filename + '.', suffix='.part', dir=folder)
        try:
            with os.fdopen(fd, 'wb') as out:
                copy_url(url, out, filename, timeout)
            verify(part, checksums)
            os.replace(part, target)
            return target
        except (OSError, http.client.HTTPException, ChecksumError) as e:
            print('download failed: {}: {}'.format(url, failure_reason(e)), file=sys.stderr)
        finally:
            if os.path.exists(part):
                os.remove(part)
    raise DownloadError('{}: no mirror served an intact copy (tried {})'.format(
        filename, ', '.join(mirrors) or 'none'))


def copy_url(url, out, label, timeout):
    """Copy the body at `url` into the open file `out`, showing progress; DownloadError if the
    body is shorter than its Content-Length (urllib itself lets that pass silently)."""
    request = urllib.request.Request(url, headers={'User-Agent': USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get('Content-Length')
        size = int(length) if length else None
        received = 0
        with meter.bar(size, label, unit='bytes', leave=False) as bar:
            for block in iter(lambda: response.read(1 << 16), b''):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if size is not None and received < size:
        raise DownloadError('truncated: {} of {} bytes'.format(received, size))


def failure_reason(error):
    """A short reason for a failed download."""
    if isinstance(error, urllib.error.HTTPError):
        return 'HTTP {} {}'.format(error.code, error.reason)
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__

def download_archives(name, folder, mirrors=None, files=None):
    """Download the archives of `name` ('MNIST', 'CIFAR10') into `folder` and verify them;
    archives already there with the right checksums are not downloaded again.

    mirrors: base URLs, tried in order (default DOWNLOADS[name]['mirrors']); files:
    {filename: {algorithm: hex}} (default DOWNLOADS[name]['files']).
    """
    spec = download_spec(name)
    mirrors = spec['mirrors'] if mirrors is None else mirrors
    files = spec['files'] if files is None else files
    for filename, checksums in files.items():
        path = os.path.join(folder, filename)
        if os.path.exists(path) and has_checksums(path, checksums):
            print('{}: already there, checksums good'.format(path), file=sys.stderr)
        else:
            download(filename, mirrors, checksums, folder)


def has_checksums(path, checksums):
    """True if the file's digests are `checksums`."""
    try:
        verify(path, checksums)
    except ChecksumError:
        return False
    return True
