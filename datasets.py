"""The data sets (SPEC section 8), what Fuel gave the released code.

Toy sets, made from a seed:
The Swiss roll is a 2-D spiral (t cos t, t sin t), t uniform in [1.5 pi, 4.5 pi],
with isotropic Gaussian noise of std `noise` in those units, then centred and
divided by one constant so that the per-dimension variance is 1 (paper section 3).
The binary heartbeat is 20 bits with a 1 in every 5th bin at a random phase
(Appendix D.1.2).

Image sets, each read by load_images(name, split) as uint8 (N, C, H, W):
- MNIST and CIFAR-10, downloaded (`python datasets.py fetch NAME`) or converted from
  archives already on disk (`python datasets.py convert NAME --raw DIR`) into
  mnist.hdf5 and cifar10.hdf5 in Fuel's HDF5 layout (streams.py);
- dead leaves, generated from a seed and cached as deadleaves_<size>_<count>_<seed>.hdf5;
- bark, patches of texture photographs (UIUC T01-T04, or scikit-image's textures);
- digits, scikit-learn's 8x8 digits.
The files live in the data path: --data-path, else $FUEL_DATA_PATH, else
~/.local/share/diffusion-data (see data_path).
"""
import argparse
import gzip
import hashlib
import http.client
import os
import pickle
import shlex
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np
from scipy.special import logsumexp
from tqdm import tqdm

import streams

SWISSROLL_T = (1.5 * np.pi, 4.5 * np.pi)
SWISSROLL_NOISE = 0.005         # std of the roll's noise, in spiral units (before scaling)
HEARTBEAT_LENGTH, HEARTBEAT_PERIOD = 20, 5


def spiral(t):
    """Points on the noiseless roll, (n, 2)."""
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1)


def swissroll_normalisation(n=200000, seed=12345):
    """(centre, scale) that map the noiseless roll to zero mean and unit variance.

    Fixed by a large sample from a fixed seed so every split shares one transform.
    """
    x = spiral(np.random.default_rng(seed).uniform(*SWISSROLL_T, size=n))
    centre = x.mean(axis=0)
    return centre, np.sqrt(((x - centre) ** 2).mean())


def swissroll(n, seed, noise=SWISSROLL_NOISE):
    """n points of the scaled Swiss roll, float32 (n, 2)."""
    rng = np.random.default_rng(seed)
    centre, scale = swissroll_normalisation()
    x = spiral(rng.uniform(*SWISSROLL_T, size=n)) + noise * rng.normal(size=(n, 2))
    return ((x - centre) / scale).astype('float32')


def swissroll_log_density(y, noise=SWISSROLL_NOISE, n_grid=None):
    """Exact log density (nats) of the scaled Swiss roll at points y (n, 2).

    p(x) = integral over t of U(t) N(x; spiral(t), noise^2 I), by the trapezoid rule on
    a grid fine enough to resolve the Gaussian along the spiral; the change of
    variables x = centre + scale y adds 2 log(scale).
    """
    centre, scale = swissroll_normalisation()
    x = np.asarray(y, dtype=np.float64) * scale + centre
    lo, hi = SWISSROLL_T
    if n_grid is None:  # >= 8 grid points per noise width along the fastest part of the arc
        n_grid = int(8 * (hi - lo) * np.sqrt(1 + hi ** 2) / noise) + 1
    t = np.linspace(lo, hi, n_grid)
    w = np.full(n_grid, (hi - lo) / (n_grid - 1))
    w[[0, -1]] /= 2
    log_w = np.log(w / (hi - lo))                     # uniform p(t) times trapezoid weights
    s = spiral(t)
    out = np.empty(len(x))
    for i in range(0, len(x), 64):
        d2 = ((x[i:i + 64, None, :] - s[None]) ** 2).sum(-1)  # (chunk, n_grid)
        out[i:i + 64] = logsumexp(log_w - d2 / (2 * noise ** 2), axis=1)
    return out - np.log(2 * np.pi * noise ** 2) + 2 * np.log(scale)


def heartbeat_patterns():
    """The 5 possible sequences, one per phase, float32 (5, 20)."""
    bins = np.arange(HEARTBEAT_LENGTH)
    phase = np.arange(HEARTBEAT_PERIOD)
    return ((bins[None, :] - phase[:, None]) % HEARTBEAT_PERIOD == 0).astype('float32')


def heartbeat(n, seed):
    """n binary sequences of 20 bins with a 1 every 5th bin at a random phase, float32."""
    return heartbeat_patterns()[np.random.default_rng(seed).integers(HEARTBEAT_PERIOD, size=n)]


def heartbeat_log_likelihood_bits():
    """The true log likelihood of every heartbeat sequence: log2(1/5) = -2.322 bits."""
    return -np.log2(HEARTBEAT_PERIOD)


# ---------------------------------------------------------------- where the files live

DEFAULT_DATA_PATH = '~/.local/share/diffusion-data'  # when neither --data-path nor $FUEL_DATA_PATH
SPLITS = ('train', 'test')
IMAGE_SETS = ('MNIST', 'CIFAR10', 'deadleaves', 'bark', 'digits')
IMAGE_AXES = {'features': ('batch', 'channel', 'height', 'width'), 'targets': ('batch', 'index')}

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


def data_path(cli_value=None):
    """The folder of the data files: `cli_value` (--data-path), else the first entry of
    $FUEL_DATA_PATH, else DEFAULT_DATA_PATH. Nothing is created until a file is written."""
    for value in (cli_value, os.environ.get('FUEL_DATA_PATH', '').split(os.pathsep)[0]):
        if value:
            return os.path.abspath(os.path.expanduser(value))
    return os.path.expanduser(DEFAULT_DATA_PATH)


def data_file(filename, cli_value=None):
    """Path of `filename` in the data path (see data_path)."""
    return os.path.join(data_path(cli_value), filename)


def downloaded_file(name, cli_value=None):
    """Path of the HDF5 file of MNIST or CIFAR10; DataMissing, saying how to make it, if absent."""
    folder, filename = data_path(cli_value), download_spec(name)['hdf5']
    path = os.path.join(folder, filename)
    if not os.path.exists(path):
        where = shlex.quote(folder)
        raise DataMissing('{} not found in {}; run: python datasets.py fetch {} --data-path {} '
                          '(or convert from files you have: python datasets.py convert {} '
                          '--raw DIR --data-path {})'.format(filename, folder, name, where,
                                                              name, where))
    return path


def download_spec(name):
    """The DOWNLOADS entry of `name`."""
    if name not in DOWNLOADS:
        raise ValueError('{!r} is not downloaded; choose from {}'.format(
            name, ', '.join(DOWNLOADS)))
    return DOWNLOADS[name]


# ---------------------------------------------------------------- Fuel-layout image files

def write_images(path, features, targets=None):
    """Write {split: uint8 (n, C, H, W)} and optionally {split: labels (n,)} to `path`.

    Fuel's layout as its MNIST and CIFAR-10 converters wrote it: train then test stacked
    on axis 0, 'targets' uint8 (N, 1), axis labels on both.
    """
    n_train, n_test = len(features['train']), len(features['test'])
    sources = {'features': np.concatenate([features[s] for s in SPLITS])}
    if targets is not None:
        sources['targets'] = np.concatenate([targets[s] for s in SPLITS]).reshape(-1, 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    streams.write_fuel_hdf5(path, sources, {'train': (0, n_train),
                                            'test': (n_train, n_train + n_test)}, IMAGE_AXES)


def read_images(path, split, shape=None):
    """The uint8 'features' (n, C, H, W) of `split`; `shape` is the expected (C, H, W)."""
    x = streams.read_fuel_hdf5(path, split)['features']
    if x.dtype != np.uint8 or x.ndim != 4 or (shape is not None and x.shape[1:] != tuple(shape)):
        want = '(N, {}, {}, {})'.format(*shape) if shape is not None else '(N, C, H, W)'
        raise streams.LayoutError('{}: features are {} {}; expected uint8 {}; delete the file '
                                  'and make it again'.format(path, x.dtype, x.shape, want))
    return x


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


class ArrayUnpickler(pickle.Unpickler):
    """Loads dicts, lists, bytes and numpy arrays only: any other pickle could run code.

    _codecs.encode is how Python 3 writes bytes at pickle protocol 2 (a re-pickled copy).
    """

    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
               ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError('refusing to load {}.{}'.format(module, name))
        return super().find_class(module, name)


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
        batch = ArrayUnpickler(tar.extractfile(members[name]), encoding='bytes').load()
        data, labels = np.asarray(batch[b'data']), np.asarray(batch[b'labels'])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
        raise FormatError('{}: {} is not a CIFAR-10 batch ({})'.format(path, name, e))
    if data.dtype != np.uint8 or data.shape[1:] != (3 * 32 * 32,) or labels.shape != data.shape[:1]:
        raise FormatError('{}: {} holds data {} {} and {} labels; expected uint8 (n, 3072) and '
                          'n labels'.format(path, name, data.dtype, data.shape, labels.size))
    return data.reshape(-1, 3, 32, 32), labels.astype(np.uint8)


def convert(name, raw_dir, data_path):
    """Convert the archives of `name` ('MNIST', 'CIFAR10') in `raw_dir` to its HDF5 file in
    the folder `data_path`, in Fuel's layout; returns the file's path."""
    spec = download_spec(name)
    arrays = {'MNIST': read_mnist, 'CIFAR10': read_cifar10}[name](raw_dir)
    path = os.path.join(data_path, spec['hdf5'])
    write_images(path, {s: arrays[s][0] for s in SPLITS}, {s: arrays[s][1] for s in SPLITS})
    return path


# ---------------------------------------------------------------- downloads

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
        with tqdm(total=size, unit='B', unit_scale=True, desc=label, leave=False) as bar:
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


def fetch(name, data_path, mirrors=None, files=None):
    """Download the archives of `name` ('MNIST', 'CIFAR10') into the folder `data_path`,
    verify them and convert them; returns the HDF5 path.

    mirrors: base URLs, tried in order (default DOWNLOADS[name]['mirrors']); files:
    {filename: {algorithm: hex}} (default DOWNLOADS[name]['files']). Archives already there
    with the right checksums are not downloaded again.
    """
    spec = download_spec(name)
    mirrors = spec['mirrors'] if mirrors is None else mirrors
    files = spec['files'] if files is None else files
    for filename, checksums in files.items():
        path = os.path.join(data_path, filename)
        if os.path.exists(path) and has_checksums(path, checksums):
            print('{}: already there, checksums good'.format(path))
        else:
            download(filename, mirrors, checksums, data_path)
    return convert(name, data_path, data_path)


def has_checksums(path, checksums):
    """True if the file's digests are `checksums`."""
    try:
        verify(path, checksums)
    except ChecksumError:
        return False
    return True


# ---------------------------------------------------------------- dead leaves

# Theis et al. 2012, whose images the paper used, do not publish their generator's
# settings; these are ours (SPEC section 8).
DEADLEAVES_SIZE = 64     # pixels per side
DEADLEAVES_COUNT = 10000  # images; the last tenth is the test split
DEADLEAVES_SEED = 1
DEADLEAVES_RMIN = 1.0    # smallest radius, pixels; the largest is half the image side
DEADLEAVES_BATCH = 256   # disks drawn per vectorised step (the images depend on it too)


def deadleaves_radii(rng, n, rmin, rmax):
    """n radii with density proportional to r^-3 on [rmin, rmax], by inverting the CDF
    F(r) = (rmin^-2 - r^-2) / (rmin^-2 - rmax^-2)."""
    u = rng.uniform(size=n)
    return (rmin ** -2 - u * (rmin ** -2 - rmax ** -2)) ** -0.5


def deadleaves_image(rng, size, rmin, rmax):
    """One dead-leaves image (Lee, Mumford & Huang 2001), float (size, size) in [0, 1].

    Disks of uniform grey level, radius from deadleaves_radii, centre uniform on
    [-rmax, size + rmax]^2 (every position from which a disk can reach the image, so
    edges are covered like the middle) are laid front to back: each pixel takes the grey
    of the first disk that covers its centre, and drawing stops when every pixel is
    covered; later disks would be hidden. Disks come DEADLEAVES_BATCH at a time, tested
    against all still-open pixels at once: 6 ms per 64x64 image here, against 140 ms for
    painting one disk at a time over its bounding box.
    """
    image = np.full(size * size, np.nan)
    rows, cols = np.divmod(np.arange(size * size), size)
    centres = np.arange(size, dtype=np.float32) + 0.5  # pixel centres, in pixels
    still_open = np.arange(size * size)               # flat indices of uncovered pixels
    while still_open.size:
        r = deadleaves_radii(rng, DEADLEAVES_BATCH, rmin, rmax).astype(np.float32)
        cy, cx = rng.uniform(-rmax, size + rmax, (2, DEADLEAVES_BATCH)).astype(np.float32)
        grey = rng.uniform(size=DEADLEAVES_BATCH)
        dy2 = (centres[:, None] - cy) ** 2 - r ** 2  # (size, batch)
        dx2 = (centres[:, None] - cx) ** 2
        covers = dy2[rows[still_open]] + dx2[cols[still_open]] <= 0  # (open pixels, batch)
        first = covers.argmax(axis=1)
        hit = covers[np.arange(still_open.size), first]
        image[still_open[hit]] = grey[first[hit]]
        still_open = still_open[~hit]
    return image.reshape(size, size)


def deadleaves(count, size=DEADLEAVES_SIZE, seed=DEADLEAVES_SEED):
    """`count` dead-leaves images, uint8 (count, 1, size, size), radii in
    [DEADLEAVES_RMIN, size / 2]; image i comes from the seed (seed, i)."""
    out = np.empty((count, 1, size, size), np.uint8)
    for i in tqdm(range(count), desc='dead leaves', unit='image', disable=count < 1000):
        rng = np.random.default_rng([seed, i])
        out[i, 0] = np.round(255 * deadleaves_image(rng, size, DEADLEAVES_RMIN, size / 2))
    return out


def deadleaves_file(data_path=None, size=DEADLEAVES_SIZE, count=DEADLEAVES_COUNT,
                    seed=DEADLEAVES_SEED):
    """Path of deadleaves_<size>_<count>_<seed>.hdf5 in the data path, generated first if
    missing: the first count - count // 10 images are the train split, the rest test."""
    if count < 10:
        raise ValueError('dead leaves: count must be at least 10 (one tenth is the test split)')
    path = data_file('deadleaves_{}_{}_{}.hdf5'.format(size, count, seed), data_path)
    if not os.path.exists(path):
        images = deadleaves(count, size, seed)
        n_train = count - count // 10
        write_images(path, {'train': images[:n_train], 'test': images[n_train:]})
    return path


# ---------------------------------------------------------------- bark

# scikit-image's grey 512x512 textures, shipped inside its package (no download).
BARK_TEXTURES = ('grass', 'gravel', 'brick')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.tif', '.tiff', '.pgm', '.bmp')


def bark(folder=None, patch=64, stride=None):
    """Grey texture patches, {split: uint8 (n, 1, patch, patch)}, made on the fly (no cache).

    With `folder` (the paper's: UIUC textures T01-T04, bark1-3 and wood1), every image
    file under it, sorted by path, goes to test if its index is 3 mod 4, else to train,
    so the two splits come from disjoint photographs. Without, scikit-image's grass,
    gravel and brick are used; as there are only three, each image's top three quarters
    give the training patches and its bottom quarter the test patches. Patches are cut
    on a grid of step `stride` (default `patch`: adjacent, not overlapping).
    """
    if folder is None:
        print("bark: no folder given; using scikit-image's grass, gravel and brick textures "
              '(top 3/4 of each for train, bottom 1/4 for test)')
        images = builtin_textures()
    else:
        images = folder_textures(folder)
    return {s: patches(images[s], patch, stride or patch) for s in SPLITS}


def builtin_textures():
    """{split: [uint8 (h, w)]}: the top 3/4 of each BARK_TEXTURES image for train, the rest test."""
    import skimage.data  # imported here: only bark needs scikit-image
    images = [getattr(skimage.data, name)() for name in BARK_TEXTURES]
    return {'train': [x[:3 * len(x) // 4] for x in images],
            'test': [x[3 * len(x) // 4:] for x in images]}


def folder_textures(folder):
    """{split: [uint8 (h, w)]}: grey images under `folder`, every fourth one (sorted) for test."""
    import skimage.io  # imported here: only bark needs scikit-image
    import skimage.util
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder)
                   for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    if len(paths) < 4:
        raise DataMissing('{}: {} image files found; bark needs at least 4 (every fourth is '
                          'held out for test)'.format(folder, len(paths)))
    images = [skimage.util.img_as_ubyte(skimage.io.imread(p, as_gray=True)) for p in paths]
    return {'train': [x for i, x in enumerate(images) if i % 4 != 3],
            'test': [x for i, x in enumerate(images) if i % 4 == 3]}


def patches(images, patch, stride):
    """All patch x patch squares on a grid of step `stride` in each image, (n, 1, patch, patch)."""
    squares = [x[top:top + patch, left:left + patch] for x in images
               for top in range(0, x.shape[0] - patch + 1, stride)
               for left in range(0, x.shape[1] - patch + 1, stride)]
    if not squares:
        raise ValueError('bark: no {0}x{0} patch fits in the images'.format(patch))
    return np.stack(squares)[:, None]


# ---------------------------------------------------------------- digits

DIGITS_SEED, DIGITS_TRAIN = 0, 1500  # fixed split of the 1,797 images: 1,500 train, 297 test


def digits():
    """scikit-learn's 8x8 digits, {split: uint8 (n, 1, 8, 8)}, grey 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits  # imported here: only digits needs scikit-learn
    x = np.round(load_digits().images * 255 / 16).astype(np.uint8)[:, None]
    order = np.random.default_rng(DIGITS_SEED).permutation(len(x))
    return {'train': x[order[:DIGITS_TRAIN]], 'test': x[order[DIGITS_TRAIN:]]}


# ---------------------------------------------------------------- one entry point

def load_images(name, split, data_path=None, **options):
    """The images of data set `name` (one of IMAGE_SETS), split 'train' or 'test', as uint8
    (N, C, H, W).

    data_path: --data-path (see data_path). options: deadleaves: size, count, seed (the
    file is generated if missing); bark: folder, patch, stride. MNIST and CIFAR10 raise
    DataMissing if their file is absent, streams.LayoutError if it is not what it should be.
    """
    if split not in SPLITS:
        raise ValueError('unknown split {!r}; choose from {}'.format(split, ', '.join(SPLITS)))
    if name in ('MNIST', 'CIFAR10', 'digits') and options:
        raise ValueError('{} takes no options (got {})'.format(name, ', '.join(options)))
    if name in DOWNLOADS:
        return read_images(downloaded_file(name, data_path), split, DOWNLOADS[name]['shape'])
    if name == 'deadleaves':
        return read_images(deadleaves_file(data_path, **options), split)
    if name == 'bark':
        return bark(**options)[split]
    if name == 'digits':
        return digits()[split]
    raise ValueError('unknown data set {!r}; choose from {}'.format(name, ', '.join(IMAGE_SETS)))


# ---------------------------------------------------------------- command line

def info(name, cli_value=None):
    """Print where data set `name` lives and, per split, its shape, dtype and value range.
    For dead leaves (default options) this generates the file if it is missing."""
    if name in DOWNLOADS or name == 'deadleaves':
        path = downloaded_file(name, cli_value) if name in DOWNLOADS else deadleaves_file(cli_value)
        print('{}: {} (sha256 {})'.format(name, path, digests(path, ['sha256'])['sha256']))
    else:
        print('{}: made in memory, no file'.format(name))
    for split in SPLITS:
        x = load_images(name, split, cli_value)
        print('  {}: {} {}, values {}..{}'.format(split, x.shape, x.dtype, x.min(), x.max()))


def parser():
    """The command line: fetch, convert, info."""
    top = argparse.ArgumentParser(description='Fetch, convert and inspect the image data sets.')
    commands = top.add_subparsers(dest='command', required=True)
    fetch_ = commands.add_parser('fetch', help='download, verify and convert MNIST or CIFAR10')
    convert_ = commands.add_parser('convert', help='convert archives already on disk')
    info_ = commands.add_parser('info', help='print path, shapes, dtypes and value ranges')
    fetch_.add_argument('name', choices=list(DOWNLOADS))
    convert_.add_argument('name', choices=list(DOWNLOADS))
    convert_.add_argument('--raw', required=True, help='folder holding the downloaded archives')
    info_.add_argument('name', choices=IMAGE_SETS)
    for command in (fetch_, convert_, info_):
        command.add_argument('--data-path', help='folder of the data files (default: the first '
                             'entry of $FUEL_DATA_PATH, else {})'.format(DEFAULT_DATA_PATH))
    return top


def main(argv=None):
    """Run the command line; returns the exit status (2 for an error the user can fix)."""
    args = parser().parse_args(argv)
    try:
        folder = data_path(args.data_path)
        if args.command == 'fetch':
            print(fetch(args.name, folder))
        elif args.command == 'convert':
            print(convert(args.name, args.raw, folder))
        else:
            info(args.name, args.data_path)
    except (DataMissing, FormatError, streams.LayoutError, OSError) as e:
        print('error: {}'.format(e), file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
