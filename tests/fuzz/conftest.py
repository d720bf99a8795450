"""Shared settings and helpers of the ``fuzz`` test group (hypothesis).

Every reader of outside input is fed mutated valid files and generated ones. Allowed outcomes:
success, or a torchslim error with exit code 3 (ConfigError) or 4 (UnsafeInputError) whose message
names the problem; never another exception, never more than :data:`fuzz_guard.HANG_SECONDS` (5 s) per input (a real
limit: :func:`fuzz_guard.guard_input` interrupts the input with SIGALRM and fails it as :class:`fuzz_guard.FuzzHang`, where
hypothesis' ``deadline`` only looks at the clock after an input has returned), never more than
:data:`MAX_RSS_GROWTH_MB` of peak resident memory over the resident memory at the start of a test
(``VmHWM`` reset before each test; without ``/proc``, growth of the process-wide ``ru_maxrss``).

Budget: ``TORCHSLIM_FUZZ_EXAMPLES`` inputs per test (default 60, derandomized: the same inputs on every
CI run); set it (e.g. 10000) for the long, randomized local run described in RELIABILITY.md.
"""

from __future__ import annotations

import os
import resource
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # fuzz_guard.py beside this file
    sys.path.insert(0, _HERE)

from fuzz_guard import check_refused_or_ok, guard_input, reset_peak_rss_kb, status_kb  # noqa: E402

_LONG = "TORCHSLIM_FUZZ_EXAMPLES" in os.environ
MAX_RSS_GROWTH_MB = 512

settings.register_profile(
    "torchslim-fuzz",
    max_examples=int(os.environ.get("TORCHSLIM_FUZZ_EXAMPLES", "60")),
    deadline=timedelta(seconds=5),
    derandomize=not _LONG,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    print_blob=True,
)

_POS = st.integers(0, 1 << 20)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _POS, st.integers(0, 7)),
    st.tuples(st.just("truncate"), _POS),
    st.tuples(st.just("insert"), _POS, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _POS, st.integers(1, 64)),
    st.tuples(st.just("overwrite"), _POS, st.binary(min_size=1, max_size=16)),
)


def apply_mutations(data: bytes, ops: list[tuple]) -> bytes:
    """``data`` after each ``(kind, position, ...)`` op; positions wrap around the current length."""
    out = bytearray(data)
    for kind, pos, *rest in ops:
        at = pos % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << rest[0]
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = rest[0]
        elif kind == "delete":
            del out[at : at + rest[0]]
        elif kind == "overwrite":
            out[at : at + len(rest[0])] = rest[0]
    return bytes(out)


@pytest.fixture
def mutate():
    """``mutate(data, valid_bytes)``: ``valid_bytes`` after 1-4 mutations drawn from hypothesis' ``data``."""

    def _mutate(data, valid: bytes) -> bytes:
        return apply_mutations(valid, data.draw(st.lists(MUTATION, min_size=1, max_size=4), label="mutations"))

    return _mutate


@pytest.fixture
def refused_or_ok():
    """``refused_or_ok(fn, *args, hang_seconds=5.0)``: :func:`fuzz_guard.check_refused_or_ok` (success or
    exit 3/4 with a message, within ``hang_seconds``)."""
    return check_refused_or_ok


@pytest.fixture
def input_guard():
    """``input_guard(seconds, what)``: :func:`fuzz_guard.guard_input`, for checkers of their own (the HF readers')."""
    return guard_input


@pytest.fixture(autouse=True)
def _bounded_memory():
    """Fail a fuzz test whose peak resident memory rose more than MAX_RSS_GROWTH_MB over the resident
    memory at its start. On Linux the peak is this test's own (``VmHWM``, reset before the test); without
    ``/proc`` it is the process-wide ``ru_maxrss``, which cannot see growth below an earlier peak."""
    start_kb = reset_peak_rss_kb()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    if start_kb is not None:
        grown_mb = (status_kb("VmHWM") - start_kb) / 1024
    else:
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < MAX_RSS_GROWTH_MB, f"peak memory grew by {grown_mb:.0f} MB"
