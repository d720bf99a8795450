"""Progress of long work that people and logs can both read.

:func:`progress` wraps a loop (an iterable, or a known count of steps) in a task that reports itself
on stderr (stdout may carry ``--json`` output):

* on a terminal or in a notebook: a live rich bar with the elapsed and the remaining time; tasks
  started inside another one (a recipe step → GPTQ layers → calibration batches) are shown as
  indented bars of the same live display and disappear when they end;
* elsewhere (CI, a log file, a pipe) or with ``TORCHSLIM_PROGRESS=plain``: plain lines, when an
  outermost task starts and ends and at most every ``TORCHSLIM_PROGRESS_INTERVAL`` seconds (default
  10) while it runs, for the innermost task that moved, prefixed by the tasks around it (a nested
  task that lasted longer than the interval also prints its end line)::

      torchslim: recipe int4-g128 > int4 gptq 12/40 layers (30%), 14.2 s elapsed, ~33 s left

* with ``TORCHSLIM_PROGRESS=off``, or inside a task made with ``enabled=False``: nothing.

The line formatting (:func:`progress_line`, :func:`format_duration`, :func:`eta_seconds`,
:func:`rate`) is pure and separate from the output.

Example:
    >>> import io
    >>> ticks = iter([0.0, 6.0, 11.0, 14.0])
    >>> out = io.StringIO()
    >>> with progress(3, "demo", unit="layers", mode="plain", stream=out, clock=lambda: next(ticks)) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    >>> print(out.getvalue(), end="")
    torchslim: demo started (3 layers)
    torchslim: demo 2/3 layers (66%), 11.0 s elapsed, ~6 s left
    torchslim: demo done: 3 layers in 14.0 s
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

from torchslim.errors import ConfigError

__all__ = [
    "DEFAULT_INTERVAL",
    "ENV_INTERVAL",
    "ENV_MODE",
    "MODES",
    "Task",
    "eta_seconds",
    "format_duration",
    "note",
    "progress",
    "progress_line",
    "rate",
    "resolve_interval",
    "resolve_mode",
]

ENV_MODE = "TORCHSLIM_PROGRESS"
ENV_INTERVAL = "TORCHSLIM_PROGRESS_INTERVAL"
MODES = ("auto", "rich", "plain", "off")
DEFAULT_INTERVAL = 10.0
PREFIX = "torchslim: "


# --- pure formatting -------------------------------------------------------------------------------


def format_duration(seconds: float, decimals: int = 1) -> str:
    """A short human duration: ``"4.2 s"`` under a minute, then ``"3 min 05 s"``, then ``"1 h 02 min"``.

    Under one second one more decimal is shown (``"0.04 s"``), so short steps do not read ``0.0 s``.

    Example:
        >>> format_duration(14.24), format_duration(33.4, decimals=0), format_duration(185), format_duration(3725)
        ('14.2 s', '33 s', '3 min 05 s', '1 h 02 min')
        >>> format_duration(0.041)
        '0.04 s'
    """
    seconds = max(0.0, float(seconds))
    if decimals and seconds < 0.995:
        return f"{seconds:.{decimals + 1}f} s"
    if round(seconds, decimals) < 60:
        return f"{seconds:.{decimals}f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def eta_seconds(done: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left at the mean pace so far; None when it cannot be told (no total, nothing done yet).

    Example:
        >>> eta_seconds(10, 40, 5.0), eta_seconds(0, 40, 3.0), eta_seconds(5, None, 3.0)
        (15.0, None, None)
    """
    if total is None or done <= 0 or elapsed < 0:
        return None
    return max(0.0, (total - done) * elapsed / done)


def rate(done: float, elapsed: float) -> float | None:
    """Steps per second so far, or None before any time has passed.

    Example:
        >>> rate(30, 12.0), rate(3, 0.0)
        (2.5, None)
    """
    return done / elapsed if elapsed > 0 else None


def _count(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


def progress_line(
    desc: str, done: float, total: float | None, unit: str, elapsed: float, status: str = "", skipped: float = 0
) -> str:
    """One plain progress line (without the ``torchslim:`` prefix).

    With a total: the count, the percentage, the elapsed time and the time left; without one: the
    count, the elapsed time and the rate. ``status`` (a layer name, a loss) is appended after ``;``.
    ``skipped`` steps (done before a resume, within ``done``) count for the percentage, not the pace.

    Example:
        >>> progress_line("calibration", 12, 40, "batches", 14.2)
        'calibration 12/40 batches (30%), 14.2 s elapsed, ~33 s left'
        >>> progress_line("distill", 30, None, "steps", 12.0, status="loss 0.4210")
        'distill 30 steps, 12.0 s elapsed, 2.5 steps/s; loss 0.4210'
    """
    if total:
        parts = [f"{desc} {_count(done)}/{_count(total)} {unit} ({math.floor(100 * done / total):d}%)"]
    else:
        parts = [f"{desc} {_count(done)} {unit}"]
    parts.append(f"{format_duration(elapsed)} elapsed")
    eta = eta_seconds(done - skipped, None if total is None else total - skipped, elapsed)
    speed = rate(done - skipped, elapsed)
    if eta is not None:
        parts.append(f"~{format_duration(eta, decimals=0)} left")
    elif not total and speed is not None:
        parts.append(f"{speed:.3g} {unit}/s")
    line = ", ".join(parts)
    return f"{line}; {status}" if status else line


def _start_line(desc: str, total: float | None, unit: str) -> str:
    return f"{desc} started ({_count(total)} {unit})" if total else f"{desc} started"


def _end_line(desc: str, done: float, total: float | None, unit: str, elapsed: float, failed: bool) -> str:
    if failed:
        return f"{desc} stopped by an error after {_count(done)} {unit}, {format_duration(elapsed)}"
    if total and done < total:
        return f"{desc} stopped after {_count(done)}/{_count(total)} {unit}, {format_duration(elapsed)}"
    return f"{desc} done: {_count(done)} {unit} in {format_duration(elapsed)}"


# --- settings ----------------------------------------------------------------------------------------


def resolve_mode(environ: Mapping[str, str] | None = None) -> str:
    """The output mode asked for by ``TORCHSLIM_PROGRESS``: ``auto`` (default), ``rich``, ``plain`` or ``off``.

    Raises:
        ConfigError: any other value.

    Example:
        >>> resolve_mode({}), resolve_mode({"TORCHSLIM_PROGRESS": " Plain "})
        ('auto', 'plain')
    """
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_MODE, "").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"{ENV_MODE} must be one of {', '.join(MODES)}, got {environ[ENV_MODE]!r}")
    return value


def resolve_interval(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between plain progress lines, from ``TORCHSLIM_PROGRESS_INTERVAL`` (default 10).

    Raises:
        ConfigError: not a finite number > 0.

    Example:
        >>> resolve_interval({}), resolve_interval({"TORCHSLIM_PROGRESS_INTERVAL": "2.5"})
        (10.0, 2.5)
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{ENV_INTERVAL} must be a number of seconds > 0, got {raw!r}")
    return value


# --- output ------------------------------------------------------------------------------------------

# The tasks running in this context, outermost first (a ContextVar: nothing is shared between threads
# or leaks out of a task that ended).
_ACTIVE: contextvars.ContextVar[tuple[Task, ...]] = contextvars.ContextVar("torchslim_progress", default=())


class _Root:
    """What the tasks of one outermost task share: the mode, the clock, the output and the last line's time."""

    def __init__(self, mode: str, interval: float, clock: Callable[[], float], stream: TextIO | None, console: Any):
        self.mode, self.interval, self.clock = mode, interval, clock
        self.stream, self.console = stream, console
        self.bar: Any = None  # the live rich Progress (rich mode)
        self.last_line = -math.inf  # clock time of the last plain line
        self.lock = threading.Lock()

    def emit(self, text: str) -> None:
        """Print one line: above the live bars (rich) or as a plain ``torchslim:`` line on stderr."""
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
            return
        with self.lock:
            print(PREFIX + text, file=self.stream or sys.stderr, flush=True)


def _rich_bar(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )


class Task:
    """One reported loop; made by :func:`progress`, used as a context manager and/or an iterator.

    ``advance`` / ``update`` move it (and may print a plain line when the interval has passed);
    ``note`` prints a one-off line in an outermost task's output (above the bars, or as a plain line).
    """

    def __init__(
        self,
        items: Iterable[Any] | None,
        total: float | None,
        desc: str,
        unit: str,
        enabled: bool,
        mode: str | None,
        clock: Callable[[], float] | None,
        stream: TextIO | None,
        console: Any,
    ) -> None:
        self.items, self.total, self.desc, self.unit = items, total, desc, unit
        self.enabled, self._mode, self._clock, self._stream, self._console = enabled, mode, clock, stream, console
        self.done: float = 0
        self.skipped: float = 0
        self.status = ""
        self.root: _Root | None = None
        self.parents: tuple[Task, ...] = ()
        self.started = 0.0
        self._rich_id: Any = None
        self._token: contextvars.Token | None = None

    # -- lifecycle --

    def __enter__(self) -> Task:
        if self.root is not None:
            raise RuntimeError(f"progress task {self.desc!r} is already running")
        self.parents = _ACTIVE.get()
        if self.parents:
            self.root = self.parents[-1].root
            if not self.enabled:  # a quiet task silences everything inside it
                self.root = _Root("off", self.root.interval, self.root.clock, None, None)
        else:
            self.root = self._new_root()
        self.started = self.root.clock()
        if not self.parents:
            self.root.last_line = self.started
        self._token = _ACTIVE.set((*self.parents, self))
        if self.root.mode == "rich":
            self._rich_id = self.root.bar.add_task(
                "  " * self._depth() + self.desc, total=self.total, unit=self.unit, status=""
            )
        elif self.root.mode == "plain" and not self.parents:
            self.root.emit(_start_line(self.desc, self.total, self.unit))
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        root = self.root
        assert root is not None
        try:
            if root.mode == "rich":
                if self.parents and self.parents[-1].root is root:
                    root.bar.remove_task(self._rich_id)
                else:
                    root.bar.update(self._rich_id, completed=self.done)
                    root.bar.stop()
                    root.bar = None
            elif root.mode == "plain":
                elapsed = self.elapsed
                # A nested task prints its end line only when it was long itself (many short ones,
                # e.g. per-layer calibration passes, would flood the log).
                if not self.parents or elapsed >= root.interval:
                    # GeneratorExit: the loop over the task's items ended early (a break, or an error in
                    # the loop body, which the iterator cannot tell apart).
                    failed = exc_type is not None and exc_type is not GeneratorExit
                    line = _end_line(self.desc, self.done, self.total, self.unit, elapsed, failed)
                    root.emit(self._prefix() + line)
        finally:
            self._pop()

    def _pop(self) -> None:
        if self._token is None:
            return
        try:
            _ACTIVE.reset(self._token)
        except ValueError:  # left from another context: drop just this task
            _ACTIVE.set(tuple(t for t in _ACTIVE.get() if t is not self))
        self._token = None

    def __iter__(self) -> Iterator[Any]:
        if self.items is None:
            raise TypeError(f"progress task {self.desc!r} was given a count, not an iterable")
        # Entered already by `with` (root set): iterate inside that task; else the loop is the task.
        with contextlib.nullcontext() if self.root is not None else self:
            for item in self.items:
                yield item
                self.advance()

    def _new_root(self) -> _Root:
        mode = self._mode or resolve_mode()
        if not self.enabled:
            mode = "off"
        console = self._console
        if mode in ("auto", "rich"):
            if console is None:
                from rich.console import Console

                console = Console(stderr=True)
            if mode == "auto":
                mode = "rich" if (console.is_interactive or console.is_jupyter) else "plain"
        interval = resolve_interval() if mode == "plain" else DEFAULT_INTERVAL
        root = _Root(mode, interval, self._clock or time.monotonic, self._stream, console)
        if mode == "rich":
            from rich.errors import LiveError

            bar = _rich_bar(console)
            try:
                bar.start()
            except LiveError:  # the caller already shows a live display: fall back to plain lines
                root.mode = "plain"
            else:
                root.bar = bar
        return root

    # -- state --

    @property
    def elapsed(self) -> float:
        """Seconds since the task started (0 before)."""
        return self.root.clock() - self.started if self.root is not None else 0.0

    def _depth(self) -> int:
        return len(self.parents)

    def _prefix(self) -> str:
        names = [f"{t.desc} ({t.status})" if t.status else t.desc for t in self.parents]
        return "".join(f"{n} > " for n in names)

    # -- moving --

    def skip(self, n: float) -> None:
        """Count ``n`` steps as done before this run (a resumed run); the time left is estimated without them."""
        self.done += n
        self.skipped += n
        if self.root is not None and self.root.bar is not None and self._rich_id is not None:
            self.root.bar.update(self._rich_id, completed=self.done)

    def advance(self, n: float = 1, *, status: str | None = None) -> None:
        """Count ``n`` more steps done (and set the status text, e.g. a loss or the current layer)."""
        self.update(completed=self.done + n, status=status)

    def update(self, *, completed: float | None = None, total: float | None = None, status: str | None = None) -> None:
        """Set the count, the total or the status text; in plain mode print a line if the interval has passed."""
        if completed is not None:
            self.done = completed
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status
        root = self.root
        if root is None or root.mode == "off":
            return
        if root.bar is not None and self._rich_id is not None:
            root.bar.update(self._rich_id, completed=self.done, total=self.total, status=self.status)
        elif root.mode == "plain" and not (self.total and self.done >= self.total):  # (its end line follows)
            now = root.clock()
            if now - root.last_line >= root.interval:
                root.last_line = now
                line = progress_line(
                    self.desc, self.done, self.total, self.unit, now - self.started, self.status, skipped=self.skipped
                )
                root.emit(self._prefix() + line)

    def note(self, text: str) -> None:
        """Print ``text`` as one line of this task's output when it is the outermost task.

        Nothing when the task is quiet or nested (a tune run's trials each run a recipe: their step
        lines would flood the log; the outer task's periodic lines show where they are).
        """
        if self.root is None:
            note(text)
        elif not self.parents:
            self.root.emit(text)


def progress(
    items: Iterable[Any] | float | None = None,
    desc: str = "working",
    *,
    unit: str = "steps",
    total: float | None = None,
    enabled: bool = True,
    mode: str | None = None,
    clock: Callable[[], float] | None = None,
    stream: TextIO | None = None,
    console: Any = None,
) -> Task:
    """A progress task over ``items`` (an iterable, or a number of steps; None: unknown).

    Use it as a context manager (``with progress(40, "gptq", unit="layers") as bar: ... bar.advance()``),
    as an iterator (``for batch in progress(batches, "calibration", unit="batches"): ...``), or both.
    A task started while another runs in the same thread/context is shown nested in it.

    Args:
        items: what to loop over (its ``len`` is the total when it has one) or the number of steps.
        desc: what the work is, e.g. ``"calibration"``.
        unit: what one step is, plural (``"batches"``, ``"layers"``, ``"trials"``).
        total: the number of steps, when ``items`` is an iterable without ``len``.
        enabled: False makes this task and everything inside it quiet (a ``progress=False`` argument).
        mode / clock / stream / console: for tests and embedding; by default the mode comes from
            ``TORCHSLIM_PROGRESS``, the clock is ``time.monotonic``, plain lines go to ``sys.stderr`` and
            rich bars to a stderr console. Nested tasks use their outermost task's.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> sum(progress([1, 2, 3], "adding", unit="numbers", mode="plain", stream=out))
        6
        >>> out.getvalue().splitlines()[0]
        'torchslim: adding started (3 numbers)'
    """
    if isinstance(items, (int, float)) and not isinstance(items, bool):
        items, total = None, items if total is None else total
    elif items is not None and total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if mode is not None and mode not in MODES:
        raise ConfigError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    return Task(items, total, desc, unit, enabled, mode, clock, stream, console)


def note(text: str) -> None:
    """Print ``text`` as a progress line: in the running task's output, else plainly on stderr (unless ``off``).

    Example:
        >>> note("hello")  # doctest: +SKIP
        torchslim: hello
    """
    active = _ACTIVE.get()
    if active:
        active[-1].note(text)
    elif resolve_mode() != "off":
        print(PREFIX + text, file=sys.stderr, flush=True)
