"""backend.keep_heap_memory: glibc's heap settings that keep a training step's arrays
(docs/performance.md); the golden runs (test_golden.py) check that they change no number."""
import backend


def test_heap_settings_are_made_unless_the_user_set_them(monkeypatch):
    for name in backend.HEAP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert sorted(backend.keep_heap_memory()) == sorted(backend.HEAP_SETTINGS)
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '0')
    assert backend.keep_heap_memory() == ['MALLOC_MMAP_THRESHOLD_']
