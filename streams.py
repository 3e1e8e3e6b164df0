"""What the released code took from Fuel: data sets in memory, Fuel's HDF5 layout,
minibatch schemes and data streams.

Fuel's HDF5 layout (H5PYDataset): one HDF5 dataset per source ('features',
'targets'), all splits stacked along the first axis, and a root attribute
'split', a table with one row per (split, source): name, source, start, stop,
indices (an HDF5 object reference, null for contiguous splits), available and
comment. Axis labels sit on each dataset's dimension scales.
"""
import os

import h5py
import numpy as np

SPLIT_DTYPE = np.dtype([('split', 'S16'), ('source', 'S16'), ('start', np.int64),
                        ('stop', np.int64), ('indices', h5py.ref_dtype),
                        ('available', np.bool_), ('comment', 'S2')])


class LayoutError(ValueError):
    """An HDF5 file that is not in Fuel's layout, or lacks a split or source."""


# ---------------------------------------------------------------- HDF5 files

def write_fuel_hdf5(path, sources, splits, axis_labels=None):
    """Write `sources` (name -> array, splits stacked on axis 0) to `path` in Fuel's layout.

    splits: name -> (start, stop). axis_labels: source -> tuple of names.
    Written to a temporary file and renamed, so a crash never leaves half a file.
    """
    tmp = path + '.part'
    with h5py.File(tmp, 'w') as f:
        for name, array in sources.items():
            dset = f.create_dataset(name, data=array, track_times=False)  # no timestamps: the same bytes on every run
            for axis, label in enumerate((axis_labels or {}).get(name, ())):
                dset.dims[axis].label = label
        rows = [(split, name, start, stop, None, True, b'')
                for split, (start, stop) in splits.items() for name in sources]
        table = np.empty(len(rows), dtype=SPLIT_DTYPE)
        for i, (split, name, start, stop, _, available, comment) in enumerate(rows):
            table[i] = (split.encode(), name.encode(), start, stop, h5py.Reference(),
                        available, comment)
        f.attrs['split'] = table
        f.attrs['h5py_interface_version'] = b'0.3'
    os.replace(tmp, path)


def read_split_table(f, path):
    """{(split, source): (start, stop)} from the root 'split' attribute."""
    if 'split' not in f.attrs:
        raise LayoutError("{}: no 'split' attribute; expected an HDF5 file in Fuel's layout "
                          "(sources stacked on axis 0 plus a split table)".format(path))
    table = {}
    for row in f.attrs['split']:
        split, source = (_text(row['split']), _text(row['source']))
        if row['indices']:
            raise LayoutError('{}: split {!r} uses an index list; only contiguous splits '
                              'are supported'.format(path, split))
        table[split, source] = (int(row['start']), int(row['stop']))
    return table


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def read_fuel_hdf5(path, split, sources=('features',)):
    """Arrays of `sources` for `split` from a Fuel-layout file, loaded into memory."""
    try:
        f = h5py.File(path, 'r')
    except OSError as e:
        raise LayoutError('{}: not a readable HDF5 file ({}); delete it and convert '
                          'or fetch it again'.format(path, e))
    with f:
        table = read_split_table(f, path)
        out = {}
        for source in sources:
            if (split, source) not in table:
                have = sorted('{}/{}'.format(*k) for k in table)
                raise LayoutError('{}: no split {!r} of source {!r}; the file has {}'.format(
                    path, split, source, ', '.join(have)))
            if source not in f:
                raise LayoutError('{}: the split table lists source {!r} but the file has no '
                                  'such dataset'.format(path, source))
            start, stop = table[split, source]
            out[source] = f[source][start:stop]
    return out


# ---------------------------------------------------------------- data sets

class ArrayDataset:
    """Named arrays of equal length held in memory."""

    def __init__(self, **sources):
        lengths = {len(a) for a in sources.values()}
        if len(lengths) != 1:
            raise ValueError('sources differ in length: {}'.format(
                {k: len(a) for k, a in sources.items()}))
        self.sources = sources
        self.num_examples = lengths.pop()

    def get(self, indices):
        return {k: a[indices] for k, a in self.sources.items()}


# ---------------------------------------------------------------- schemes

class SequentialScheme:
    """Examples in order, in minibatches of `batch_size` (the last may be smaller)."""

    def __init__(self, num_examples, batch_size):
        self.num_examples, self.batch_size = num_examples, batch_size

    def order(self, epoch):
        return np.arange(self.num_examples)

    def batches(self, epoch):
        order = self.order(epoch)
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]


class ShuffledScheme(SequentialScheme):
    """A fresh random order every epoch, derived from (seed, epoch) so it can be replayed."""

    def __init__(self, num_examples, batch_size, seed):
        super().__init__(num_examples, batch_size)
        self.seed = seed

    def order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)


# ---------------------------------------------------------------- streams

class DataStream:
    """Minibatches (dicts source -> array) of `dataset` in the order of `scheme`. The
    per-minibatch randomness of training (noise, t, dequantisation, crops) is not here: it
    comes from the iteration's generator (mainloop.MainLoop.rng), so a resumed run repeats
    an uninterrupted one."""

    def __init__(self, dataset, scheme):
        self.dataset, self.scheme = dataset, scheme

    def epoch(self, epoch=0, start=0):
        """Yields the minibatches of epoch `epoch`, from the `start`-th on."""
        for indices in self.scheme.batches(epoch)[start:]:
            yield self.dataset.get(indices)
