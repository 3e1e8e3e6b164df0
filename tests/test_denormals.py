"""backend.flush_denormals: denormal floats flushed to zero (FTZ and DAZ) in every thread,
unless DIFFUSION_DENORMALS=keep; docs/performance.md says why."""
import os
import subprocess
import sys

import numpy as np
import pytest

import backend

STALE_LOCK = 'WARNING (theano.gof.compilelock): Overriding existing lock by dead process'
TINY = np.float32(1e-38)  # normal; a thousandth of it is a float32 denormal
PROBE = """
import backend, numpy as np, theano, theano.tensor as tt
from concurrent.futures import ThreadPoolExecutor
x = tt.fvector()
f = theano.function([x], x * np.float32(1e-3))
tiny = np.full(4, 1e-38, np.float32)
np.finfo(np.float32), np.finfo(np.float64)  # would warn that the smallest subnormal is zero
print(float(np.float32(1e-38) * np.float32(1e-3)), float(f(tiny)[0]),
      ThreadPoolExecutor(1).submit(lambda: float(np.float32(1e-38) * np.float32(1e-3))).result())
"""


def probe(env_value):
    env = dict(os.environ)
    env.pop(backend.DENORMALS_ENV, None)
    if env_value is not None:
        env[backend.DENORMALS_ENV] = env_value
    run = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return run


@pytest.mark.skipif(os.uname().machine != 'x86_64', reason='FTZ/DAZ are set on x86-64 only')
def test_denormals_are_flushed_by_default_in_numpy_theano_and_new_threads():
    assert TINY * np.float32(1e-3) == 0.0  # this test process imported backend too
    run = probe(None)
    assert run.returncode == 0, run.stderr
    assert [float(v) for v in run.stdout.split()] == [0.0, 0.0, 0.0]
    # numpy's warning about finfo's subnormals is silenced: nothing on stderr but Theano's notice,
    # when a process that held its compile lock was killed, that this one takes the lock over
    assert [line for line in run.stderr.splitlines() if not line.startswith(STALE_LOCK)] == [], run.stderr


@pytest.mark.skipif(os.uname().machine != 'x86_64', reason='FTZ/DAZ are set on x86-64 only')
def test_keep_gives_gradual_underflow():
    run = probe('keep')
    assert run.returncode == 0, run.stderr
    values = [float(v) for v in run.stdout.split()]
    assert all(0 < v < 1.2e-38 for v in values), values


def test_a_wrong_value_is_one_line_and_exit_2():
    run = probe('sometimes')
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: DIFFUSION_DENORMALS='sometimes': must be flush (the default) or keep"]


def test_the_provenance_record_says_whether_denormals_are_flushed():
    import provenance
    assert provenance.machine()['denormals_flushed'] is (os.uname().machine == 'x86_64')
