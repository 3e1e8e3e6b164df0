"""The instruction-set pin (backend.pin_isa, DIFFUSION_ISA=avx2): what it sets, what a run
records, and its refusal of other values. The golden runs (test_golden.py) check that it
gives the AVX2 machines' digits."""
import json
import os
import subprocess
import sys

import pytest

import backend

pytestmark = pytest.mark.slow  # imports Theano in fresh processes (python -m pytest -m "not slow" leaves it out)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX512_MACHINE = {'avx2', 'fma', 'avx512f', 'avx512cd', 'avx512bw', 'avx512dq', 'avx512vl', 'avx512_vnni',
                  'avx512ifma', 'avx512vbmi', 'avx512_vbmi2', 'avx512_bitalg', 'avx512_vpopcntdq'}


def test_machine_isa_names_the_widest_vector_set():
    assert backend.machine_isa(AVX512_MACHINE) == 'AVX-512'
    assert backend.machine_isa({'avx2', 'fma', 'sse2'}) == 'AVX2'
    assert backend.machine_isa({'avx', 'sse2'}) == 'below AVX2'


def test_numpy_targets_are_only_those_the_machine_runs():
    """numpy refuses (with a warning) to disable a target the CPU lacks, so the list must
    leave out the Xeon Phi targets on an ordinary AVX-512 machine, and be empty on AVX2."""
    targets = backend.numpy_avx512_targets(AVX512_MACHINE)
    assert targets == ['AVX512F', 'AVX512CD', 'AVX512_SKX', 'AVX512_CLX', 'AVX512_CNL', 'AVX512_ICL']
    assert backend.numpy_avx512_targets({'avx2', 'fma'}) == []


def probe(env):
    """What a fresh process records (provenance.environment), under `env`."""
    code = ('import json, provenance; e = provenance.environment(); print(json.dumps({k: e[k] for k in '
            '("isa_pinned", "c_march", "numpy_simd", "openblas_core", "theano_flags")}))')
    env = dict({k: v for k, v in os.environ.items() if k not in ('DIFFUSION_ISA', 'NPY_DISABLE_CPU_FEATURES')},
               **env)
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pin_sets_the_baseline_for_c_code_blas_and_numpy():
    pinned = probe({'DIFFUSION_ISA': 'avx2', 'OPENBLAS_CORETYPE': 'SkylakeX'})  # a parent's setting is replaced
    assert pinned['isa_pinned'] is True and pinned['c_march'] == 'x86-64-v3'
    assert 'gcc.cxxflags=-march=x86-64-v3' in pinned['theano_flags']
    assert not pinned['numpy_simd'].startswith('AVX512')
    if backend.find_openblas() and backend.openblas_coretype(backend.cpu_flags()):
        assert pinned['openblas_core'] == 'Haswell'
    native = probe({'DIFFUSION_ISA': 'native'})
    assert native['isa_pinned'] is False and native['c_march'] == 'native'
    assert '-march' not in native['theano_flags']


def test_other_values_are_refused_in_one_line():
    out = subprocess.run([sys.executable, '-c', 'import backend'], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, DIFFUSION_ISA='avx3'), timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count('\n') == 0 and 'DIFFUSION_ISA' in out.stderr


def test_golden_message_names_the_instruction_set_not_the_paths():
    import test_golden
    recorded = {'isa': 'AVX-512', 'isa_pinned': True, 'c_march': 'x86-64-v3', 'openblas_core': 'Haswell',
                'numpy_simd': 'AVX2', 'blas': '/a/venv/scipy.libs/libopenblasp.so',
                'theano_flags': 'floatX=float32,"blas.ldflags=-L/a/venv/scipy.libs -l:libopenblasp.so",openmp=True'}
    moved = dict(recorded, isa='AVX2', blas='/b/other/scipy.libs/libopenblasp.so',
                 theano_flags=recorded['theano_flags'].replace('/a/venv', '/b/other'))
    assert test_golden.environment_changes(recorded, moved) == []
    native = dict(moved, isa_pinned=False, c_march='native')
    changes = test_golden.environment_changes(recorded, native)
    assert changes[0] == 'instruction set (machine AVX-512 then, AVX2 now)'
    assert changes[1:] == ["isa_pinned: True then, False now", "c_march: 'x86-64-v3' then, 'native' now"]
