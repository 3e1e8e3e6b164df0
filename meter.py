"""Progress of long work, with the time left: a bar (tqdm) on a terminal, otherwise whole
lines at most one per QUIET_S seconds, so that a log file or a pipe gets no carriage
returns and no more than one line per QUIET_S seconds per task."""
import contextlib
import sys
import threading
import time

from tqdm import tqdm

QUIET_S = 30.0  # the longest any command stays silent, and the least time between two lines of one task


def duration(seconds):
    """'45 s', '12 min', '3 h 05 min'."""
    if seconds < 100:
        return '{:.0f} s'.format(seconds)
    minutes = round(seconds / 60)
    return '{} min'.format(minutes) if minutes < 100 else '{} h {:02d} min'.format(minutes // 60, minutes % 60)


def elapsed(seconds):
    """'45 s', '4 min 30 s', '1 h 05 min 30 s': time spent, to the second, so that lines every
    30 s never repeat a figure (duration() rounds to whole minutes)."""
    seconds = int(round(seconds))
    if seconds < 100:
        return '{} s'.format(seconds)
    if seconds < 3600:
        return '{} min {:02d} s'.format(seconds // 60, seconds % 60)
    return '{} h {:02d} min {:02d} s'.format(seconds // 3600, seconds % 3600 // 60, seconds % 60)


def is_terminal(stream):
    """Whether `stream` is a terminal (where a bar may redraw itself in place)."""
    return bool(getattr(stream, 'isatty', lambda: False)())


class Lines:
    """Progress as whole lines: after each update, a line when QUIET_S seconds of `clock`
    have passed since the start or the last line: done / total, the rate since the start
    and the time left at that rate. The same methods as a tqdm bar (update, close)."""

    def __init__(self, total, desc, unit, initial, stream, clock=time.monotonic):
        self.total, self.desc, self.unit, self.stream, self.clock = total, desc, unit, stream, clock
        self.n = self.first = initial
        self.start = self.last = clock()

    def update(self, n=1):
        self.n += n
        now = self.clock()
        if now - self.last >= QUIET_S:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now):
        """'bound K: 120/500 batches (24%), 2.1 batches/s, 3 min left'."""
        rate = (self.n - self.first) / (now - self.start)
        if not self.total:
            return '{}: {} {}, {:.3g} {}/s'.format(self.desc, self.n, self.unit, rate, self.unit)
        left = ', {} left'.format(duration((self.total - self.n) / rate)) if rate > 0 else ''
        return '{}: {}/{} {} ({:.0%}), {:.3g} {}/s{}'.format(self.desc, self.n, self.total, self.unit,
                                                             self.n / self.total, rate, self.unit, left)

    def close(self):
        """Nothing to clear: every line is whole."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bar(total, desc, unit='batches', initial=0, enabled=True, leave=True, stream=None, clock=time.monotonic):
    """The progress of `total` units of work (update(n), close()), on `stream` (stderr): a
    tqdm bar on a terminal, Lines elsewhere, nothing if not enabled."""
    stream = stream or sys.stderr
    if enabled and not is_terminal(stream):
        return Lines(total, desc, unit, initial, stream, clock)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=leave, file=stream)


def track(iterable, desc, total=None, **options):
    """The items of `iterable`, with bar(len(iterable) or total, desc, **options) updated as
    each one is done."""
    progress = bar(len(iterable) if total is None else total, desc, **options)
    try:
        for item in iterable:
            yield item
            progress.update(1)
    finally:
        progress.close()


@contextlib.contextmanager
def waiting(what, stream=None, every_s=QUIET_S, enabled=True):
    """For work that reports no progress of its own (compiling): a line 'still <what>
    (4 min 30 s)' on `stream` (stdout) every `every_s` seconds until the block ends."""
    if not enabled:
        yield
        return
    stream = stream or sys.stdout
    done, start = threading.Event(), time.monotonic()

    def beat():
        while not done.wait(every_s):
            print('  still {} ({})'.format(what, elapsed(time.monotonic() - start)), file=stream, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
