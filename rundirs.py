"""Run directories and the files in them: a run's own folder, its one-writer lock,
JSON written atomically and without NaN, and the restricted unpickler for old pickles."""
import fcntl
import json
import math
import os
import pickle
import socket
import time
from contextlib import contextmanager

import numpy as np

def make_run_dir(output_dir, model, dataset, suffix=''):
    """Create and return OUTPUT_DIR/<model>_<dataset>[_suffix]_<timestamp>."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    name = '_'.join(p for p in (model, dataset, suffix, stamp) if p)
    path = os.path.join(output_dir, name)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(output_dir, '{}-{}'.format(name, n))
    os.makedirs(path)
    return path


class RunLock:
    """One writer per run directory: an exclusive lock (flock) on RUN_DIR/run.lock, whose
    content names the holder (pid, host, start time). The kernel drops the lock when its
    process ends, however it ends, so the file a killed run leaves behind is taken over."""

    FILE = 'run.lock'

    def __init__(self, run_dir):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, self.FILE)
        self.fd = None

    def acquire(self):
        """Take the lock; returns what the file said before (a process that is gone) or None.
        ValueError (one line naming the holder) while a running process holds it. On a file
        system without locks the run goes on unlocked."""
        while True:  # read-only: no file open for writing stays open (a disk can then be remounted read-only)
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.holder(fd)
                os.close(fd)
                raise ValueError('{} is in use by process {} on {} (since {}): one run directory has one '
                                 'writer; wait for that run to end, or stop it'.format(
                                     self.run_dir, holder.get('pid', '?'), holder.get('host', '?'),
                                     holder.get('since', '?')))
            except OSError:
                os.close(fd)
                return None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed the file meanwhile: take the new one
        self.fd, previous = fd, self.holder(fd)
        with open(self.path, 'w') as f:
            json.dump({'pid': os.getpid(), 'host': socket.gethostname(),
                       'since': time.strftime('%Y-%m-%d %H:%M:%S')}, f)
        return previous or None

    @staticmethod
    def holder(fd):
        """The lock file's content, {} when empty or unreadable."""
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def release(self):
        """Remove the file and drop the lock (the file goes first: no one takes a removed file)."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def write_json(path, obj):
    """Write `obj` as indented JSON (json_safe), atomically."""
    tmp = path + '.tmp'
    with naming(path):
        with open(tmp, 'w') as f:
            f.write(to_json(obj, indent=2, sort_keys=True) + '\n')
        os.replace(tmp, path)


def json_safe(obj):
    """`obj` with NaN and infinite numbers as None, numpy numbers and arrays as Python's:
    JSON has no NaN (null stands for a value that is not a number)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return int(obj) if isinstance(obj, np.integer) else obj


def to_json(obj, **options):
    """json.dumps of json_safe(obj): valid JSON, never NaN."""
    return json.dumps(json_safe(obj), allow_nan=False, default=float, **options)


@contextmanager
def naming(path):
    """An OSError inside names `path` (a write to a full disk raises one that names no
    file, and a temporary file's name is not the one to report)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), path) from e


class ArrayUnpickler(pickle.Unpickler):
    """Loads dicts, lists, bytes, numbers and numpy arrays only: any other pickle could
    run code (CIFAR-10's batches, the old checkpoints).

    _codecs.encode is how Python 3 writes bytes at pickle protocol 2 (a re-pickled copy).
    """

    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
               ('numpy.core.numeric', '_frombuffer'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
               ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError('refusing to load {}.{}'.format(module, name))
        return super().find_class(module, name)
