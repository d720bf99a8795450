"""The fuzz group's own guards: a hang is interrupted and reported (not a stalled run), and the memory
bound sees the growth of one test even below an earlier, higher peak of the process."""

from __future__ import annotations

import signal
import sys
import time

import pytest
from fuzz_guard import FuzzHang, guard_input, reset_peak_rss_kb, status_kb

from torchslim.errors import UnsafeInputError

pytestmark = pytest.mark.fuzz


def sleeping_reader(data: bytes) -> None:
    time.sleep(30)


def looping_reader(data: bytes) -> None:
    while True:
        pass


def swallowing_reader(data: bytes) -> None:
    """Catches everything, as some readers do around a third-party parser, and answers exit 4."""
    try:
        time.sleep(30)
    except Exception as e:
        raise UnsafeInputError(f"cannot read: {e}") from e


@pytest.mark.parametrize("reader", [sleeping_reader, looping_reader, swallowing_reader])
def test_a_hanging_reader_is_reported_as_a_hang(reader, refused_or_ok):
    started = time.monotonic()
    with pytest.raises(
        FuzzHang, match=rf"more than 0.2 s of CPU time or 1.2 s of wall time \(a hang\): {reader.__name__}"
    ):
        refused_or_ok(reader, b"input 7", hang_seconds=0.2)
    assert time.monotonic() - started < 3


def test_a_slow_input_without_the_cpu_for_it_is_not_a_hang():
    """Waiting (as on a loaded machine) past the CPU-time limit but within the wall cap is allowed."""
    with guard_input(0.2, "starved"):
        time.sleep(0.5)


def test_a_reader_that_returns_after_the_interruption_is_still_a_hang():
    def shrugging_reader():
        try:
            time.sleep(30)
        except Exception:  # noqa: BLE001 - the behaviour under test
            return "ok"

    with pytest.raises(FuzzHang, match="shrugging"):
        with guard_input(0.2, "shrugging"):
            shrugging_reader()


def test_quick_inputs_pass_and_the_previous_alarm_is_restored(refused_or_ok):
    def mine(signum, frame):  # pragma: no cover - never fires
        raise RuntimeError

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        assert refused_or_ok(len, b"abc", hang_seconds=0.2) == 3
        time.sleep(0.3)  # the guard's timer is off: nothing fires after the input
        assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/clear_refs and VmHWM")
def test_peak_of_one_test_is_seen_below_an_earlier_higher_peak():
    earlier = bytearray(b"\1" * (256 << 20))  # an earlier, higher peak of the process (touched: resident)
    del earlier
    start = reset_peak_rss_kb()
    assert start is not None
    now = bytearray(b"\1" * (96 << 20))
    grown_mb = (status_kb("VmHWM") - start) / 1024
    del now
    assert grown_mb > 80, grown_mb  # ru_maxrss would still show the 256 MB peak: no growth
