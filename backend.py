"""The Theano and OpenBLAS set-up: importing this module configures them, so every module
that uses Theano imports it first; the only module of the project that acts at import.

It sets THEANO_FLAGS (docs/paper_and_code.md, section 7), the BLAS library and its kernel,
the thread counts under an MPI launcher, denormal floats flushed to zero (flush_denormals),
glibc's heap settings, and, with DIFFUSION_ISA=avx2, pins the
instruction set (pin_isa); numpy and Theano read these when they load, so the entry
scripts import this module before anything else. Being first, it is also where a signal
that comes while a command starts is answered in one line (stop_at_once).
"""
import fcntl
import os
import signal
import stat
import struct
import sys
import termios
import time

# ---------------------------------------------------------------- signals while a command starts
#
# Set first, before this module's other imports and long before numpy's (which alone
# takes a fifth of a second): SIGTERM, and SIGINT under an MPI launcher, end a command
# with one line at any moment, never silently with exit 143 or with a traceback. The
# commands take the signals over while they have something to finish or keep
# (mainloop.signals_raise, the main loop).

INTERRUPTED = 130  # the exit code of a command stopped by SIGINT or SIGTERM (128 + 2, the shell's for Ctrl-C)


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


def stop_at_once(signum, frame):
    """A signal where a command has nothing to finish or keep (while it imports, or once its
    work is done): one line (one write), then exit INTERRUPTED and end the job (end_job)."""
    sys.stderr.write('{}: stopped by {}\n'.format(os.path.basename(sys.argv[0]), signal.Signals(signum).name))
    end_job(INTERRUPTED)


def end_job(code):
    """Exit with `code`; under an MPI launcher of several processes, end every process of the
    job with MPI_Abort (after starting MPI if it has not started: the others would wait for
    this one in MPI_Init or in a collective), once this process's output has reached the
    launcher (flush_to_launcher)."""
    if launched_processes()[0] > 1:
        from mpi4py import MPI  # here: MPI starts only under a launcher
        if not MPI.Is_finalized():
            flush_to_launcher()
            MPI.COMM_WORLD.Abort(code)
    sys.exit(code)


def flush_to_launcher(timeout_s=10.0):
    """Flush stdout and stderr, and wait (at most timeout_s) until the launcher has read what
    they hold where they are pipes (mpiexec's, srun's). MPI_Abort ends mpiexec at once: a line
    still in the pipe when its abort arrives is never printed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + timeout_s
    for fd in (1, 2):
        while time.monotonic() < deadline and unread_bytes(fd):
            time.sleep(0.01)


def unread_bytes(fd):
    """The bytes written to the pipe `fd` that its reader has not read yet (0 when fd is not a pipe)."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
        return struct.unpack('i', fcntl.ioctl(fd, termios.FIONREAD, b'\0' * 4))[0]
    except OSError:
        return 0


signal.signal(signal.SIGTERM, stop_at_once)
if launched_processes()[0] > 1:  # Ctrl-C sent to one process alone would leave the others waiting
    signal.signal(signal.SIGINT, stop_at_once)

import glob  # noqa: E402  (after the handlers: a signal is answered first)
import importlib.util  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import warnings  # noqa: E402

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


# glibc gives every array above its mmap threshold (128 kB at first, raised as it goes, at
# most 32 MB) fresh pages from the kernel and unmaps them when it is freed, so a training step
# that makes and frees the same arrays pays the page faults (and the kernel's zeroing of the
# pages) again every step. Every array from the heap (no mmap'd chunks at all, which also
# covers CIFAR-10's 82 MB activations, above the largest threshold), and freed heap kept
# (trimmed beyond 2 GB): the dead-leaves step took 14% less CPU time with arrays up to 32 MB
# from the heap, and the CIFAR-10 step on one thread 4.7-4.9 s against 6.6-7.8 s with all of
# them, at the same peak memory (docs/performance.md). The numbers a run computes do not
# change (the golden runs).
HEAP_SETTINGS = {'MALLOC_MMAP_MAX_': (-4, 0), 'MALLOC_TRIM_THRESHOLD_': (-1, 2 ** 31 - 1)}


def keep_heap_memory():
    """Set HEAP_SETTINGS with glibc's mallopt (the mallopt parameter number, the value), each
    unless the user's environment sets it; nothing where the C library is not glibc.
    Returns the names of the settings made."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return []
    return [name for name, (parameter, value) in HEAP_SETTINGS.items()
            if name not in os.environ and mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) == 1]


# Denormal (subnormal) floats, below 1.2e-38 in float32, take the x86 floating-point unit
# a slow path, and a trained network makes them (the dead-leaves step of the committed
# model took 0.74 s against a fresh network's 0.52 s; flushed, 0.52 s: docs/performance.md).
# Flushing sets the SSE control register's FTZ (results to zero) and DAZ (inputs as zero)
# bits, as GPUs and oneDNN's kernels do. Each thread has its own register and a new thread
# copies its creator's, so this runs before numpy, OpenBLAS or OpenMP start a thread.
# DIFFUSION_DENORMALS=keep keeps IEEE gradual underflow.
DENORMALS_ENV = 'DIFFUSION_DENORMALS'
MXCSR_FTZ_DAZ = 0x8040


def floating_point_env():
    """(libm, this thread's fenv_t as 8 words) through glibc's fegetenv, or None off x86-64
    glibc; on x86-64 fenv_t is 32 bytes and ends with the MXCSR."""
    import ctypes
    import ctypes.util
    if os.uname().machine != 'x86_64' or not ctypes.util.find_library('m'):
        return None
    libm = ctypes.CDLL(ctypes.util.find_library('m'))
    env = (ctypes.c_uint32 * 8)()
    return (libm, env) if libm.fegetenv(env) == 0 else None


def flush_denormals():
    """Set FTZ and DAZ in this thread's MXCSR unless DIFFUSION_DENORMALS=keep; True when set."""
    choice = os.environ.get(DENORMALS_ENV, 'flush').lower()
    if choice not in ('flush', 'keep'):
        print('error: {}={!r}: must be flush (the default) or keep'.format(
            DENORMALS_ENV, os.environ[DENORMALS_ENV]), file=sys.stderr)
        sys.exit(2)
    fp = floating_point_env()
    if choice == 'keep' or fp is None:
        return False
    libm, env = fp
    env[7] |= MXCSR_FTZ_DAZ
    # numpy's finfo then finds the smallest subnormal to be zero, and says so: true, and meant
    warnings.filterwarnings('ignore', message='The value of the smallest subnormal', category=UserWarning)
    return libm.fesetenv(env) == 0


def denormals_flushed():
    """True when this thread flushes denormals (FTZ and DAZ set), for the provenance record."""
    fp = floating_point_env()
    return fp is not None and fp[1][7] & MXCSR_FTZ_DAZ == MXCSR_FTZ_DAZ


flush_denormals()
pin_isa()
configure_theano()
keep_heap_memory()
