"""The checkpoint format: one .npz file of arrays and JSON, written atomically, read
without Theano; old pickle checkpoints read safely and converted.

Randomness is derived, not stored: minibatch order of epoch e comes from (seed, e) and
the noise of iteration i from (seed, i). A checkpoint therefore holds counters instead
of generator states, and a resumed run repeats an uninterrupted one exactly.

A checkpoint is one .npz file (a zip of .npy arrays, np.load(path, allow_pickle=False)):
  'meta'           a 0-d unicode array holding JSON: {"format": CHECKPOINT_FORMAT,
                   "version": 1, "config": the run's settings, "status": its counters}
  'shared/<name>'  the value of each Theano shared variable (parameters, optimiser
                   state, learning rate, counters), by name.
The per-minibatch log is not inside: it is RUN_DIR/log.jsonl, and status['log_bytes']
is its length when the checkpoint was written (a resumed run truncates it there).
A released model may hold the parameters only (parameters_only): status[PARAMETERS_ONLY]
is then true, and a resume refuses it (settings.check_resumable).
"""
import glob
import io
import json
import os
import pickle
import shlex
import sys
import zipfile
import zlib

import numpy as np

import rundirs

CHECKPOINT_FORMAT = 'diffusion-thermodynamics checkpoint'
CHECKPOINT_VERSION = 1
SHARED_PREFIX = 'shared/'
PARAMETERS_ONLY = 'parameters_only'  # status key of a checkpoint without the optimiser's state


def save_checkpoint(path, state):
    """Write state {'shared': {name: array}, 'config': dict, 'status': dict} to `path`
    atomically: the file is written under a temporary name, synced and renamed, so a
    crash or kill -9 at any moment leaves the previous checkpoint intact."""
    meta = {'format': CHECKPOINT_FORMAT, 'version': CHECKPOINT_VERSION,
            'config': state.get('config', {}), 'status': state['status']}
    arrays = {SHARED_PREFIX + name: np.asarray(v) for name, v in state['shared'].items()}
    arrays['meta'] = np.array(rundirs.to_json(meta))
    with rundirs.naming(path):
        for stale in glob.glob(glob.escape(path) + '.tmp*'):  # left by a process killed mid-write
            os.remove(stale)
        tmp = '{}.tmp{}'.format(path, os.getpid())
        try:
            with open(tmp, 'wb') as f:
                archive = io.BytesIO()  # made in memory: a full disk then fails in one plain write
                np.savez(archive, **arrays)
                f.write(archive.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def parameters_only(state, names):
    """The checkpoint `state` with only the shared variables `names` (what evaluate.py and
    sampler.py load: experiments.load_parameters), marked PARAMETERS_ONLY; KeyError for a
    name it lacks."""
    return {'shared': {name: state['shared'][name] for name in names}, 'config': state['config'],
            'status': dict(state['status'], **{PARAMETERS_ONLY: True})}


def finite(arrays):
    """True when no floating-point array of `arrays` holds NaN or inf."""
    return all(np.isfinite(a).all() for a in map(np.asarray, arrays) if np.issubdtype(a.dtype, np.floating))


def checkpoint_in(path):
    """The checkpoint file `path`, or the one in the run directory `path` (checkpoint.npz,
    else an old checkpoint.pkl)."""
    if not os.path.isdir(path):
        return path
    for name in ('checkpoint.npz', 'checkpoint.pkl'):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    return os.path.join(path, 'checkpoint.npz')


def load_checkpoint(path):
    """{'shared', 'config', 'status'} of a checkpoint; ValueError (one line, with the path)
    when the file is missing, truncated, corrupt or not a checkpoint of this project.
    A checkpoint of the old pickle format is read with a restricted unpickler and a warning."""
    try:
        with open(path, 'rb') as f:
            magic = f.read(2)
    except OSError as e:
        raise ValueError('cannot read checkpoint {}: {}'.format(path, e.strerror or e))
    if magic[:1] == b'\x80':  # pickle protocol 2+
        return load_pickle_checkpoint(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError('a single array, not an .npz archive')
        with archive as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop('meta')))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError('{} is not a checkpoint of this project, or is damaged ({})'.format(
            path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if not isinstance(meta, dict) or meta.get('format') != CHECKPOINT_FORMAT:
        raise ValueError('{} is not a checkpoint of this project'.format(path))
    if meta.get('version') != CHECKPOINT_VERSION:
        raise ValueError('{} is a checkpoint of format version {}; this code reads version {}'.format(
            path, meta.get('version'), CHECKPOINT_VERSION))
    require(meta, path, CHECKPOINT_FIELDS)
    shared = {k[len(SHARED_PREFIX):]: v for k, v in arrays.items() if k.startswith(SHARED_PREFIX)}
    return {'shared': shared, 'config': meta['config'], 'status': meta['status']}


# What every checkpoint holds; train.py, experiments.py and evaluate.py ask for more.
CHECKPOINT_FIELDS = (('config', dict), ('status', dict), ('status.iterations_done', int))
MISSING = object()


def require(state, path, fields):
    """ValueError (one line naming the file and the field) unless every field, a dotted
    path into the dict `state` ('config.args.seed'), is there and has its type (a type or
    a tuple of types)."""
    for name, kind in fields:
        value = state
        for key in name.split('.'):
            value = value.get(key, MISSING) if isinstance(value, dict) else MISSING
        if value is MISSING:
            raise ValueError('{} is not a complete checkpoint of this project: it has no {}'.format(path, name))
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError('{} is not a checkpoint of this project, or is damaged: {} is {!r}'.format(
                path, name, value))


def load_pickle_checkpoint(path, warn=True):
    """A checkpoint of the old format (a pickled dict with the whole per-minibatch log),
    read with rundirs.ArrayUnpickler, which builds only arrays and plain values: a pickle can
    run code when loaded. Returns the new form; the log's evaluations are kept."""
    if warn:
        print('warning: {} is an old pickle checkpoint; pickles can run code when loaded, so it is '
              'read with an unpickler that accepts arrays and plain values only. Convert it once: '
              'python train.py --convert-checkpoint {}'.format(path, shlex.quote(path)),
              file=sys.stderr, flush=True)
    try:
        with open(path, 'rb') as f:
            state = rundirs.ArrayUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise ValueError('cannot read checkpoint {}: {}'.format(path, e))
    if not isinstance(state, dict) or not isinstance(state.get('shared'), dict):
        raise ValueError('{} is not a checkpoint of this project'.format(path))
    require(dict(state, config=state.get('config', {})), path, CHECKPOINT_FIELDS)
    status = dict(state['status'], log_bytes=None,
                  evaluations=[evaluation_record(r) for r in state.get('log', []) if EVALUATION_KEY in r])
    return {'shared': state['shared'], 'config': state.get('config', {}), 'status': status}


def convert_checkpoint(path, overwrite=False):
    """Write the .npz form of the old pickle checkpoint `path` beside it (same name,
    .npz); returns the new path. log_bytes is found from RUN_DIR/log.jsonl if it is there.
    ValueError when the .npz exists already, unless `overwrite`, and when `path` is an .npz
    checkpoint itself."""
    if not os.path.isfile(path):
        raise ValueError('cannot read checkpoint {}: no such file'.format(path))
    if zipfile.is_zipfile(path):
        load_checkpoint(path)  # one line if it is not a checkpoint of this project
        raise ValueError('{} is an .npz checkpoint already: nothing to convert (--resume, evaluate.py and '
                         'sampler.py read it as it is)'.format(path))
    state = load_pickle_checkpoint(path, warn=False)
    log = os.path.join(os.path.dirname(os.path.abspath(path)), 'log.jsonl')
    if os.path.exists(log):
        state['status']['log_bytes'] = log_offset(log, state['status']['iterations_done'])
    target = os.path.splitext(path)[0] + '.npz'
    if os.path.exists(target) and not overwrite:
        raise ValueError('{} exists already; add --overwrite to replace it'.format(target))
    save_checkpoint(target, state)
    return target


def log_offset(path, iteration):
    """The byte length of the first lines of the JSON-lines log `path` whose 'iteration' is
    at most `iteration` (where a resumed run's log is cut)."""
    offset = 0
    with open(path, 'rb') as f:
        for line in f:
            try:
                if json.loads(line)['iteration'] > iteration:
                    break
            except (ValueError, KeyError):
                break
            offset += len(line)
    return offset


# ---------------------------------------------------------------- evaluations kept across resumes

EVALUATION_KEY = 'heldout_K_bits'


def evaluation_record(record):
    """The part of a log record that the K curve needs (kept in the checkpoint's status)."""
    return {k: v for k, v in record.items()
            if k in ('iteration', 'wall_s') or k.startswith('heldout_')}
