"""Small helpers shared by several scripts: Theano set-up, logit, run directories.

Importing this module configures Theano (docs/paper_and_code.md, section 7) before
Theano itself is
imported, so every script imports util before theano; and, with DIFFUSION_ISA=avx2, pins
the instruction set before numpy is imported (pin_isa).
"""
import argparse
import ctypes
import fcntl
import glob
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import pickle
import platform
import shlex
import subprocess
import sys
import socket
import time
import warnings
from contextlib import contextmanager

# ---------------------------------------------------------------- the instruction set
#
# Three parts of a run choose their code by the CPU they run on: the C code of Theano and
# of the project's ops (Theano compiles it with the flags of -march=native), OpenBLAS
# (its kernel family) and numpy (its ufuncs dispatch to AVX-512 at run time). So the same
# run gives other last digits on an AVX-512 machine than on an AVX2 one. DIFFUSION_ISA=avx2
# pins all three to the x86-64-v3 baseline (AVX2 with FMA), which every such machine runs:
# the same bits on both kinds (the golden runs), and AVX2 speed measured on an AVX-512
# machine. Unset (or 'native'), each part takes the best the machine has.

ISA_ENV = 'DIFFUSION_ISA'
PINNED_ISA = {'march': 'x86-64-v3', 'openblas_core': 'Haswell'}
# numpy 1.23's AVX-512 dispatch targets and the /proc/cpuinfo flags each needs (beyond
# AVX512F); numpy refuses to disable a target the machine lacks, so only present ones are.
NUMPY_AVX512 = {'AVX512F': (), 'AVX512CD': ('avx512cd',), 'AVX512_KNL': ('avx512er', 'avx512pf'),
                'AVX512_KNM': ('avx5124fmaps', 'avx5124vnniw', 'avx512_vpopcntdq'),
                'AVX512_SKX': ('avx512cd', 'avx512bw', 'avx512dq', 'avx512vl'),
                'AVX512_CLX': ('avx512bw', 'avx512dq', 'avx512vl', 'avx512_vnni'),
                'AVX512_CNL': ('avx512bw', 'avx512dq', 'avx512vl', 'avx512ifma', 'avx512vbmi'),
                'AVX512_ICL': ('avx512bw', 'avx512dq', 'avx512vl', 'avx512ifma', 'avx512vbmi', 'avx512_vbmi2',
                               'avx512_bitalg', 'avx512_vpopcntdq')}


def cpuinfo(field):
    """The value of the first `field` line of /proc/cpuinfo (Linux), or None."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.split(':', 1)[0].strip() == field:
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU feature flags of this machine (Linux), or an empty set."""
    return set((cpuinfo('flags') or '').split())


def machine_isa(flags):
    """The widest vector instruction set of the CPU: 'AVX-512', 'AVX2' (with FMA) or 'below AVX2'."""
    if 'avx512f' in flags:
        return 'AVX-512'
    return 'AVX2' if 'avx2' in flags and 'fma' in flags else 'below AVX2'


def numpy_avx512_targets(flags):
    """numpy's AVX-512 dispatch targets that this CPU runs (what NPY_DISABLE_CPU_FEATURES
    must name to keep numpy on AVX2)."""
    if 'avx512f' not in flags:
        return []
    return [name for name, needs in NUMPY_AVX512.items() if all(f in flags for f in needs)]


def pinned_isa():
    """True when DIFFUSION_ISA asks for the x86-64-v3 baseline; another value than avx2 or
    native is a user error (one line, exit code 2)."""
    value = os.environ.get(ISA_ENV, 'native').lower()
    if value not in ('native', 'avx2'):
        print('error: {}={!r}: must be avx2 (the x86-64-v3 baseline on any machine) or native'.format(
            ISA_ENV, os.environ[ISA_ENV]), file=sys.stderr)
        sys.exit(2)
    return value == 'avx2'


def pin_isa():
    """With DIFFUSION_ISA=avx2: OpenBLAS's Haswell kernel and numpy without AVX-512 (both
    read when the libraries load, so this runs before numpy is imported; they replace what
    the environment says, which a parent process may have set for itself); the C code's
    -march is set in theano_flags."""
    if not pinned_isa():
        return
    os.environ['OPENBLAS_CORETYPE'] = PINNED_ISA['openblas_core']
    if 'numpy' not in sys.modules:
        os.environ['NPY_DISABLE_CPU_FEATURES'] = ' '.join(numpy_avx512_targets(cpu_flags()))


pin_isa()

import numpy as np  # noqa: E402  (after pin_isa)

# The project's Theano defaults; a user's own THEANO_FLAGS are appended and win.
# local_dot22_to_dot22scalar folds a scalar factor (a learning rate, the leaky ReLU's
# slopes) into a matrix product, and when the plain product is needed as well Theano
# then computes it twice: that rewrite doubled every weight gradient of the image
# networks (27 matrix products per MNIST step instead of 17).
BASE_FLAGS = {'floatX': 'float32', 'warn_float64': 'ignore',
              'optimizer_excluding': 'local_dot22_to_dot22scalar'}


def find_openblas():
    """Path of an LP64 OpenBLAS shared library, or None.

    Prefers the copy inside the scipy wheel (docs/paper_and_code.md, section 7),
    then a system one.
    numpy's own copy is ILP64 with suffixed symbols, so Theano cannot link it.
    """
    spec = importlib.util.find_spec('scipy')
    candidates = []
    if spec is not None and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        candidates += sorted(glob.glob(os.path.join(site, 'scipy.libs', 'libopenblasp-r*.so')))
    candidates += sorted(glob.glob('/usr/lib/*/libopenblas.so*') + glob.glob('/usr/lib/libopenblas.so*'))
    return candidates[0] if candidates else None


def blas_ldflags(path):
    """Linker flags that make Theano's C code call the OpenBLAS at `path`."""
    folder, name = os.path.split(path)
    return '-L{0} -l:{1} -Wl,-rpath,{0}'.format(folder, name)


def openblas_coretype(flags):
    """The OpenBLAS kernel to ask for, or None to let OpenBLAS decide.

    The scipy wheel's OpenBLAS 0.3.18 does not know recent Intel cores and falls back
    to its generic 'Prescott' kernel, 4x slower here (measured: 23 vs 104 GFLOP/s on
    a 2048 sgemm). Naming the newest kernel family that the CPU supports fixes that.
    """
    if 'avx512f' in flags and 'avx512bw' in flags and 'avx512vl' in flags:
        return 'SkylakeX'
    if 'avx2' in flags and 'fma' in flags:
        return 'Haswell'
    return None


def theano_flags(user_flags, openblas):
    """The THEANO_FLAGS string: project defaults first, the user's flags last (they win).

    With no OpenBLAS, blas.ldflags is set empty (Theano's NumPy C-API BLAS) which
    avoids the import-time crash under numpy 1.23; openmp is then left off, because
    that BLAS called from OpenMP threads aborts the process (docs/paper_and_code.md, section 7).
    """
    flags = dict(BASE_FLAGS)
    if pinned_isa():  # Theano adds no -march=native flags when one is given
        flags['gcc.cxxflags'] = '-march=' + PINNED_ISA['march']
    if 'blas.ldflags' not in user_flags:
        flags['blas.ldflags'] = blas_ldflags(openblas) if openblas else ''
        if openblas:
            flags['openmp'] = 'True'
    parts = ['"{}={}"'.format(k, v) if ',' in v or ' ' in v else '{}={}'.format(k, v)
             for k, v in flags.items()]
    return ','.join(parts + ([user_flags] if user_flags else []))


def silence_theano_warnings():
    """Hide Theano's known warnings under numpy 1.23 so the project's output is readable."""
    for category in (DeprecationWarning, FutureWarning, UserWarning, RuntimeWarning):
        warnings.filterwarnings('ignore', category=category, module=r'theano(\.|$)')
    warnings.filterwarnings('ignore', message=r'.*np\.(bool|int|float|object|complex)\b')
    # "We did not find a dynamic library in the library_dir": harmless with -l:file
    logging.getLogger('theano.tensor.blas').setLevel(logging.ERROR)
    logging.getLogger('theano.gof.compilelock').setLevel(logging.WARNING)


def launched_processes():
    """(processes in the job, processes on this node) as the launcher tells them in the
    environment: MPICH's Hydra (mpiexec), Open MPI (mpirun), Slurm's srun; (1, 1) without."""
    env = os.environ
    for total, local in (('PMI_SIZE', 'MPI_LOCALNRANKS'), ('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_SIZE'),
                         ('SLURM_STEP_NUM_TASKS', 'SLURM_STEP_TASKS_PER_NODE')):
        if total in env:
            n = int(env[total])
            # Slurm writes tasks per node as e.g. '4(x2),3': take the largest count
            per_node = [int(part.split('(')[0]) for part in env.get(local, str(n)).split(',') if part]
            return n, max(per_node or [n])
    return 1, 1


def default_threads():
    """OMP_NUM_THREADS and OPENBLAS_NUM_THREADS for each of several processes on a node:
    its cores (when the launcher bound it to some) or the node's cores shared out; the
    user's own settings win. Read when the libraries load, so this runs before."""
    n, local = launched_processes()
    if n == 1:
        return
    cores = len(os.sched_getaffinity(0))
    threads = cores if cores < (os.cpu_count() or cores) else max(1, cores // local)
    for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        os.environ.setdefault(name, str(threads))


# Idle threads sleep at once instead of spinning (libgomp spins for a while by default,
# OpenBLAS up to 2^28 cycles): Theano's OpenMP loops, conv3x3's transforms and OpenBLAS's
# products take turns on the same cores, and a spinning pool slowed the CIFAR-10 step
# from 4.1 s to 4.5-6.9 s and more (docs/performance.md). The user's settings win.
THREAD_WAIT = {'OMP_WAIT_POLICY': 'PASSIVE', 'OPENBLAS_THREAD_TIMEOUT': '4'}


def configure_theano():
    """Set THEANO_FLAGS (and, under an MPI launcher, the thread counts) before the first
    `import theano`; returns the BLAS in use."""
    if 'theano' in sys.modules:
        return os.environ.get('PROJECT_BLAS', 'unknown (theano imported first)')
    default_threads()
    for name, value in THREAD_WAIT.items():
        os.environ.setdefault(name, value)  # read when the libraries load
    # a child process of ours inherits THEANO_FLAGS as set below; its user's are kept apart
    user_flags = os.environ.setdefault('PROJECT_USER_THEANO_FLAGS', os.environ.get('THEANO_FLAGS', ''))
    openblas = find_openblas()
    coretype = openblas_coretype(cpu_flags())
    if openblas and coretype and 'OPENBLAS_CORETYPE' not in os.environ:
        os.environ['OPENBLAS_CORETYPE'] = coretype  # read when Theano loads the library
    os.environ['THEANO_FLAGS'] = theano_flags(user_flags, openblas)
    user_keys = {kv.split('=', 1)[0] for kv in shlex.split(user_flags.replace(',', ' '))}
    if 'blas.ldflags' in user_keys:
        os.environ['PROJECT_BLAS'] = 'user THEANO_FLAGS'
    else:
        os.environ['PROJECT_BLAS'] = openblas or 'numpy C-API (no OpenBLAS found)'
    silence_theano_warnings()
    return os.environ['PROJECT_BLAS']


def logit(p, lib=np):
    """log(p / (1 - p)); pass lib=theano.tensor for symbolic p."""
    return lib.log(p) - lib.log1p(-p)


LOG2 = np.log(2.0)  # nats per bit
MAX_SEED = 2 ** 32 - 1  # numpy's seed range (np.random.seed): 0 to 2^32 - 1


def fail(message, prog=None):
    """A user error: one line on stderr naming the script, then exit code 2."""
    print('{}: error: {}'.format(prog or os.path.basename(sys.argv[0]), message), file=sys.stderr)
    sys.exit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2, with no usage dump."""

    def error(self, message):
        fail(message, self.prog)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with each option's default (when it has one that its text does not already
    give), and the description and examples as written."""

    def _get_help_string(self, action):
        text = action.help or ''
        if (action.default is None or action.default is argparse.SUPPRESS or action.nargs == 0
                or 'default' in text or not action.option_strings):
            return text
        return text + ' (default: %(default)s)'


def command_parser(doc):
    """The parser of a command whose module docstring `doc` starts with a paragraph that
    describes it and a paragraph of example command lines (shown after the options)."""
    paragraphs = doc.split('\n\n')
    return OneLineParser(description=paragraphs[0], epilog='examples:\n' + paragraphs[1],
                         formatter_class=DefaultsHelpFormatter)


def lazy(name):
    """The module `name`, loaded at the first use of one of its attributes (importlib's
    LazyLoader): a command's --help and usage errors then answer without loading Theano."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


# ---------------------------------------------------------------- the environment of a run

PROJECT = 'diffusion-thermodynamics'
PACKAGE = 'diffusion_thermodynamics'  # the installed modules' folder (setup.py)
PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))


def openblas_info():
    """The kernel (core name) and thread count of the OpenBLAS that Theano links, or {};
    meaningful once Theano has loaded the library."""
    path = os.environ.get('PROJECT_BLAS', '')
    if not os.path.isfile(path):
        return {}
    try:
        lib = ctypes.CDLL(path)  # the copy Theano loaded: same path, same handle
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return {'openblas_core': lib.openblas_get_corename().decode(),
                'openblas_threads': lib.openblas_get_num_threads()}
    except (OSError, AttributeError):
        return {}


def git_commit():
    """(commit, dirty) of the project's git checkout, or (None, None) when the modules are not
    the top of one (an installed package, even inside another project's checkout)."""
    def git(*args):
        return subprocess.run(['git', '-C', PROJECT_DIR] + list(args), capture_output=True,
                              text=True, timeout=10)
    try:
        top = git('rev-parse', '--show-toplevel')
        if top.returncode or os.path.realpath(top.stdout.strip()) != os.path.realpath(PROJECT_DIR):
            return None, None
        dirty = git('status', '--porcelain', '--untracked-files=no').stdout.strip() != ''
        return git('rev-parse', 'HEAD').stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_source(commit):
    """Where the running code comes from: 'git checkout' (with `commit`), 'installed package'
    (a wheel or sdist install; project_version tells which), else 'source folder'."""
    if commit:
        return 'git checkout'
    try:
        installed = importlib.metadata.distribution(PROJECT).locate_file(PACKAGE + '/util.py')
    except importlib.metadata.PackageNotFoundError:
        return 'source folder'
    return 'installed package' if os.path.realpath(installed) == os.path.realpath(__file__) else 'source folder'


def numpy_simd():
    """The widest instruction set numpy's ufuncs dispatch to in this process (for example
    'AVX512_ICL', or 'AVX2' under DIFFUSION_ISA=avx2)."""
    from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    enabled = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    return enabled[-1] if enabled else 'baseline'


def compiler():
    """The C++ compiler Theano calls, with its version ('g++ 12.2.0'), or None."""
    import theano
    try:
        out = subprocess.run([theano.config.cxx, '-dumpfullversion'], capture_output=True, text=True, timeout=10)
        return '{} {}'.format(os.path.basename(theano.config.cxx), out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def isa_record():
    """The instruction sets a run used: the CPU's widest (isa), what the C code is compiled
    for (c_march: the x86-64-v3 baseline or 'native'), numpy's dispatch (numpy_simd) and the
    compiler (cxx); OpenBLAS's kernel is openblas_info's."""
    import theano
    march = [f for f in theano.config.gcc.cxxflags.split() if f.startswith('-march=')]
    return {'isa': machine_isa(cpu_flags()), 'isa_pinned': pinned_isa(),
            'c_march': march[-1][len('-march='):] if march else 'native', 'numpy_simd': numpy_simd(),
            'cxx': compiler(), 'NPY_DISABLE_CPU_FEATURES': os.environ.get('NPY_DISABLE_CPU_FEATURES')}


def machine():
    """The machine and numerical libraries a run is on: CPU, cores, BLAS and its thread
    settings, Theano (version, flags) and numpy (environment; bench.py's report)."""
    import theano  # here, not at the top: this module sets THEANO_FLAGS before Theano is imported
    return {
        'cpu': cpuinfo('model name') or platform.processor() or platform.machine(), 'cores': os.cpu_count(),
        'blas': os.environ.get('PROJECT_BLAS'), 'OPENBLAS_CORETYPE': os.environ.get('OPENBLAS_CORETYPE'),
        'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
        'OPENBLAS_NUM_THREADS': os.environ.get('OPENBLAS_NUM_THREADS'),
        'theano_flags': os.environ.get('THEANO_FLAGS'), 'theano': theano.__version__,
        'numpy': package_version('numpy')}


def environment():
    """What a result depends on besides the code's inputs: the machine (machine), the
    instruction sets (isa_record), BLAS kernel and threads, other versions, the project's
    version and commit, the command line. Stored in every results.json and checkpoint, shown
    in REPORT.md."""
    commit, dirty = git_commit()
    return dict(machine(), **{
        'python': platform.python_version(), 'scipy': package_version('scipy'),
        'processes': launched_processes()[0], 'platform': '{} {}'.format(platform.system(), platform.release()),
        'project_version': package_version(PROJECT), 'git_commit': commit, 'git_dirty': dirty, 'source': code_source(commit),
        'command': ' '.join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
    }, **openblas_info(), **isa_record())


configure_theano()
