"""backend.keep_heap_memory: glibc's heap settings that keep a training step's arrays
(docs/performance.md); the golden runs (test_golden.py) check that they change no number."""
import ctypes

import numpy as np
import pytest

import backend


def test_heap_settings_are_made_unless_the_user_set_them(monkeypatch):
    for name in backend.HEAP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert sorted(backend.keep_heap_memory()) == sorted(backend.HEAP_SETTINGS)
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '0')
    assert backend.keep_heap_memory() == ['MALLOC_MMAP_MAX_']


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc 2.33 and later): hblks counts the mmap'd chunks."""
    _fields_ = [(name, ctypes.c_size_t) for name in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                       'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


def test_a_large_array_comes_from_the_heap():
    """An array far above glibc's largest mmap threshold (32 MB) is not an mmap'd chunk,
    whose pages would be faulted in again each time it is made."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, 'mallinfo2'):
        pytest.skip('not glibc 2.33 or later')
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblks
    array = np.ones(100 * 2 ** 20 // 4, 'float32')
    assert libc.mallinfo2().hblks == before and array.sum() == array.size
