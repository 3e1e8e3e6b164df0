"""The provenance of a result: the machine, the instruction sets, the libraries and their
versions, the project's version and git commit, the command line (environment(), stored
in every results.json and checkpoint)."""
import ctypes
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys

from backend import cpu_flags, cpuinfo, denormals_flushed, launched_processes, machine_isa, pinned_isa

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
        installed = importlib.metadata.distribution(PROJECT).locate_file(PACKAGE + '/provenance.py')
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
    settings, Theano (version, flags), numpy, whether denormals are flushed (environment;
    bench.py's report)."""
    import theano  # here, not at the top: this module sets THEANO_FLAGS before Theano is imported
    return {
        'cpu': cpuinfo('model name') or platform.processor() or platform.machine(), 'cores': os.cpu_count(),
        'blas': os.environ.get('PROJECT_BLAS'), 'OPENBLAS_CORETYPE': os.environ.get('OPENBLAS_CORETYPE'),
        'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
        'OPENBLAS_NUM_THREADS': os.environ.get('OPENBLAS_NUM_THREADS'),
        'theano_flags': os.environ.get('THEANO_FLAGS'), 'theano': theano.__version__,
        'numpy': package_version('numpy'), 'denormals_flushed': denormals_flushed()}


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
