"""The fuzz group's guards of one input and one test: a real time limit per input (:func:`guard_input`)
and the peak resident memory of one test (:func:`reset_peak_rss_kb`, :func:`peak_rss_kb`).

Used by ``tests/fuzz/conftest.py``'s fixtures and by the HF readers' own checker.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchslim.errors import ConfigError, TorchslimError, UnsafeInputError

HANG_SECONDS = 5.0
WALL_FACTOR = 6  # the wall-time cap of one input, in multiples of its CPU-time limit


class FuzzHang(AssertionError):
    """One fuzz input ran longer than its limit (raised by :func:`guard_input`)."""


def _describe(args: tuple, kwargs: dict) -> str:
    return ", ".join([repr(a)[:200] for a in args] + [f"{k}={v!r}"[:200] for k, v in kwargs.items()])


@contextmanager
def guard_input(seconds: float, what: str) -> Iterator[None]:
    """Interrupt the body with :class:`FuzzHang` (naming ``what``) once it has run ``seconds`` of wall time
    while getting that much CPU time, or ``WALL_FACTOR`` times ``seconds`` of wall time in any case.

    A real timer (``setitimer(ITIMER_REAL)`` and SIGALRM), so a reader stuck in a loop fails the test
    instead of stalling it; the previous handler and timer are restored afterwards. When the timer fires
    and the process had less than ``seconds`` of CPU time since the input started (a loaded machine, or
    a reader blocked without spinning), the timer is re-armed for the CPU time still allowed, up to the
    wall cap: a slow input on a busy machine is not a hang, a loop is. A reader that catches the
    interruption (``except Exception``) and answers with its own error, or returns, still fails with
    :class:`FuzzHang`. Only in the main thread of a POSIX process (elsewhere the body runs unguarded). A
    reader blocked inside C code that does not return to the interpreter is interrupted when it next does.

    Example:
        >>> with guard_input(1.0, "quick input"):
        ...     sum(range(10))
        45
    """
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    message = f"one input took more than {seconds:g} s of CPU time or {WALL_FACTOR * seconds:g} s of wall time (a hang): {what}"
    fired = []
    cpu0, wall0 = time.process_time(), time.monotonic()

    def _fire(signum, frame):
        used, waited = time.process_time() - cpu0, time.monotonic() - wall0
        if used < seconds and waited < WALL_FACTOR * seconds:  # starved or blocked so far: wait on
            signal.setitimer(signal.ITIMER_REAL, max(min(seconds - used, WALL_FACTOR * seconds - waited), 0.01))
            return
        fired.append(True)
        raise FuzzHang(message)

    previous = signal.signal(signal.SIGALRM, _fire)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except BaseException as e:
        if fired and not isinstance(e, FuzzHang):  # the reader turned the interruption into its own error
            raise FuzzHang(message) from e
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if previous_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *previous_timer)
    if fired:  # the reader caught the interruption and returned anyway
        raise FuzzHang(message)


def check_refused_or_ok(fn, *args, hang_seconds: float = HANG_SECONDS, **kwargs):
    """Call ``fn(*args, **kwargs)`` under :func:`guard_input`; only success or a documented exit-3/4 error
    with a message may happen (returned: the result or the error); anything else fails the test."""
    try:
        with guard_input(hang_seconds, f"{getattr(fn, '__name__', fn)}({_describe(args, kwargs)})"):
            return fn(*args, **kwargs)
    except (UnsafeInputError, ConfigError) as e:
        assert e.exit_code in (3, 4)
        assert str(e).strip(), "the error must name the problem"
        return e
    except TorchslimError as e:  # any other torchslim error is a wrong exit code for bad input
        raise AssertionError(f"{type(e).__name__} (exit {e.exit_code}) for malformed input: {e}") from e


def reset_peak_rss_kb() -> int | None:
    """The resident set now (``VmRSS``, KB), after resetting the high-water mark ``VmHWM`` to it; None
    without ``/proc`` (or where ``clear_refs`` may not be written)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set to the current one
        return status_kb("VmRSS")
    except (OSError, StopIteration, ValueError):
        return None


def status_kb(key: str) -> int:
    """A ``key: N kB`` line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in KB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{key}:"))
