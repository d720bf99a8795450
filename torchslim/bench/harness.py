"""Benchmark harness: a benchmark is a declared table of variants run over one harness.

Variant names: ``fp32`` is the baseline, ours start with ``torchslim-``, peers with ``peer-``; every
``speedup`` is the fp32 median latency over the variant's, measured in the same run (variants timed
round-robin, see :func:`torchslim.measure.interleaved_latency`). The result is the benchmark JSON
(``benchmark``, ``device``, ``torch``, ``threads``, ``rows``, ``notes``; each row ``variant``,
``latency_ms``, ``latency_p90_ms``, ``speedup``, ``size_mb``, ``quality`` and the declared extra columns).

The harness does what every benchmark shares: build the rows (:class:`RowBuilder`: a peer that fails
to build is left out with a note, never faked), evaluate quality once (untimed), measure size and
counts (:func:`model_variant`), time all rows interleaved (:meth:`BenchTable.run`), check the rows
against the declaration (:meth:`BenchTable.check`), write the JSON atomically
(:meth:`BenchResult.write_json`). ``torchslim.bench.report`` turns :attr:`BenchTable.workload` and
:attr:`BenchTable.recipes` into each row's reproduce command.

Adding a benchmark (about 20 lines): a module ``torchslim/bench/NAME.py`` with a ``TABLE`` and a
``bench(data, quick)``, registered in ``torchslim.bench.BENCHMARKS``::

    TABLE = BenchTable(
        name="digits-bf16",
        workload="digits",                       # reproduce commands use --workload digits
        rows=("fp32", "torchslim-bf16"),          # in table order
        metrics=("accuracy",),                    # quality keys
        columns=("params",),                      # extra row keys
        recipes={"torchslim-bf16": "bf16"},       # rows `torchslim compress --recipe` rebuilds
    )

    def bench(data: str | None = None, quick: bool = False) -> BenchResult:
        wl, base, ctx = TABLE.setup(data)          # workload, its fp32 model, a context
        x = ctx.example_inputs
        ours = compress_(copy.deepcopy(base), recipe_config("bf16"))
        rows = [
            model_variant(name, m, x, lambda m=m: wl.evaluate(m, "test"))
            for name, m in (("fp32", base), ("torchslim-bf16", ours))
        ]
        return TABLE.run(rows, quick, notes=["latency per batch of 64 images"])

Peers go in :mod:`torchslim.bench.peers` when two benchmarks share them; rows whose builds may fail
(a missing package) go through :class:`RowBuilder`; a second timing pass is :func:`speedup_column`.
``tests/bench/test_tables.py`` pins every table's rows and columns.

Example:
    >>> import torch, torch.nn as nn
    >>> x = (torch.zeros(4, 8),)
    >>> res = run_benchmark("toy", [Variant("fp32", nn.Linear(8, 8), x, quality={"q": 1.0})], rounds=3, warmup=1)
    >>> res.rows[0]["speedup"]
    1.0
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchslim.io.atomic import atomic_file
from torchslim.measure.latency import interleaved_latency

log = logging.getLogger(__name__)

PREFIXES = ("torchslim-", "peer-")


@dataclass
class Variant:
    """One row of a benchmark.

    Args:
        name: ``fp32``, ``torchslim-...`` or ``peer-...``.
        model: a module or callable taking ``*inputs``.
        inputs: positional inputs for the timed call.
        size_bytes: artifact size (None when not meaningful).
        quality: metrics, or a zero-argument callable computing them (evaluated once, untimed).
        extra: further row keys (``params``, ``macs``, ...).
    """

    name: str
    model: Callable[..., Any]
    inputs: tuple[Any, ...]
    size_bytes: int | None = None
    quality: dict[str, float] | Callable[[], dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name != "fp32" and not self.name.startswith(PREFIXES):
            raise ValueError(f"variant name {self.name!r} must be 'fp32' or start with 'torchslim-' or 'peer-'")


def model_variant(
    name: str,
    model: Any,
    inputs: tuple[Any, ...],
    quality: dict[str, float] | Callable[[], dict[str, float]],
    *,
    size_bytes: int | None = None,
    measures: Sequence[str] = ("params",),
    extra: dict[str, Any] | None = None,
) -> Variant:
    """A model's row: eval mode, its artifact size (unless ``size_bytes``), and the named ``measures``.

    ``measures``: any of ``params``, ``macs`` (per sample) and ``nonzero``; ``extra``: further keys.

    Example:
        >>> import torch, torch.nn as nn
        >>> v = model_variant("fp32", nn.Linear(8, 2), (torch.zeros(1, 8),), {"q": 1.0}, measures=("params", "macs"))
        >>> v.extra, v.size_bytes > 0
        ({'params': 18, 'macs': 16}, True)
    """
    from torchslim.measure import artifact_bytes, count_macs, count_nonzero, count_params

    model.eval()
    known = {
        "params": lambda: count_params(model),
        "macs": lambda: count_macs(model, inputs, per_sample=True),
        "nonzero": lambda: count_nonzero(model),
    }
    unknown = set(measures) - set(known)
    if unknown:
        raise ValueError(f"unknown measures {sorted(unknown)}; choose from {sorted(known)}")
    row = {key: known[key]() for key in measures} | (extra or {})
    size = artifact_bytes(model) if size_bytes is None else size_bytes
    return Variant(name, model, inputs, size_bytes=size, quality=quality, extra=row)


def recipe_config(name: str) -> Any:
    """The technique config of the one-step built-in recipe ``name``.

    A benchmark row built with this config is the row ``torchslim compress --recipe NAME`` reproduces: the
    bench and the command read the same YAML file (list such rows in the bench module's ``RECIPES``).

    Example:
        >>> recipe_config("bf16")
        CastDtype(dtype='bfloat16')
    """
    from importlib import resources

    from torchslim.recipes import load_recipe

    with resources.as_file(resources.files("torchslim.recipes") / "builtin" / f"{name}.yaml") as path:
        steps = load_recipe(path).steps  # its own file only: a broken neighbour cannot stop this bench
    if len(steps) != 1 or steps[0].select is not None:
        raise ValueError(f"built-in recipe {name!r} is not one step on the whole model; run it with run_recipe")
    return steps[0].config


@dataclass
class BenchResult:
    """A benchmark's rows in the benchmark JSON schema (see the module docstring)."""

    benchmark: str
    rows: list[dict[str, Any]]
    device: str = "cpu"
    torch_version: str = torch.__version__
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "device": self.device,
            "torch": self.torch_version,
            "threads": torch.get_num_threads(),
            "rows": self.rows,
            "notes": self.notes,
        }

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as indented JSON, atomically (OutputExistsError on I/O errors)."""
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def to_markdown(self) -> str:
        header, body = self._table()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)

    def _table(self) -> tuple[list[str], list[list[str]]]:
        metrics: list[str] = []
        extras: list[str] = []
        for r in self.rows:
            metrics += [k for k in r["quality"] if k not in metrics]
            extras += [k for k in r if k not in _ROW_KEYS and k not in extras]
        header = ["variant", "latency ms", "speedup", "size MB", *metrics, *extras]
        body = []
        for r in self.rows:
            q = [f"{r['quality'][m]:.4f}" if m in r["quality"] else "-" for m in metrics]
            e = [str(r.get(k, "-")) for k in extras]
            size = "-" if r["size_mb"] is None else f"{r['size_mb']:.4f}"
            speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"  # no baseline timed for this row
            body.append([r["variant"], f"{r['latency_ms']:.3f}", speedup, size, *q, *e])
        return header, body

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table

        header, body = self._table()
        table = Table(
            title=f"bench {self.benchmark} ({self.device}, torch {self.torch_version}, {torch.get_num_threads()} threads)"
        )
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in body:
            table.add_row(*r)
        console = console or Console()
        console.print(table)
        for n in self.notes:
            console.print(f"note: {n}", markup=False)  # notes hold recipe text such as "[fc:8]"


_ROW_KEYS = {"variant", "latency_ms", "latency_p90_ms", "speedup", "size_mb", "quality"}


def run_benchmark(
    name: str,
    variants: Sequence[Variant],
    *,
    rounds: int = 30,
    warmup: int = 5,
    calls_per_round: int = 1,
    device: str = "cpu",
) -> BenchResult:
    """Evaluate every variant's quality, then time all of them interleaved; ``fp32`` must be among them."""
    names = [v.name for v in variants]
    if "fp32" not in names:
        raise ValueError("a benchmark needs an 'fp32' baseline variant")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names in {names}")
    quality = {v.name: (v.quality() if callable(v.quality) else dict(v.quality)) for v in variants}
    lat = interleaved_latency(
        {v.name: v.model for v in variants},
        {v.name: v.inputs for v in variants},
        warmup=warmup,
        rounds=rounds,
        calls_per_round=calls_per_round,
    )
    base = lat["fp32"].median_ms
    rows = []
    for v in variants:
        row = {
            "variant": v.name,
            "latency_ms": lat[v.name].median_ms,
            "latency_p90_ms": lat[v.name].p90_ms,
            "speedup": base / lat[v.name].median_ms,
            "size_mb": None if v.size_bytes is None else v.size_bytes / 1e6,
            "quality": {k: float(x) for k, x in quality[v.name].items()},
        }
        row.update(v.extra)
        rows.append(row)
    return BenchResult(name, rows, device=device or platform.machine())


@dataclass(frozen=True)
class BenchTable:
    """What a benchmark declares: its rows, columns, workload, and which rows a built-in recipe rebuilds.

    Args:
        name: the benchmark's name (``torchslim bench NAME``).
        workload: the workload every row is built from (reproduce commands pass ``--workload``).
        rows: the variant names, in table order.
        metrics: the quality keys a row may carry.
        columns: the extra row keys a row may carry (``params``, ``macs``, ``build_s``, ...).
        recipes: variant -> the built-in recipe it is built from (its reproduce command is
            ``torchslim compress --recipe NAME``); other rows reproduce with the benchmark itself.
        optional: rows that may be left out (a missing optional core); ``peer-`` rows always may.
        rounds, warmup: timing rounds and warm-up calls, ``(quick, full)``.
        calls_per_round: calls per timed sample (for sub-millisecond models).

    Example:
        >>> t = BenchTable("toy", "digits", ("fp32", "torchslim-a"), ("accuracy",), ("params",))
        >>> t.rounds_for(quick=True), t.warmup_for(quick=False)
        (10, 10)
    """

    name: str
    workload: str
    rows: tuple[str, ...]
    metrics: tuple[str, ...]
    columns: tuple[str, ...] = ()
    recipes: Mapping[str, str] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    rounds: tuple[int, int] = (10, 50)
    warmup: tuple[int, int] = (3, 10)
    calls_per_round: int = 1

    def __post_init__(self) -> None:
        if "fp32" not in self.rows or len(set(self.rows)) != len(self.rows):
            raise ValueError(f"{self.name}: rows need one 'fp32' and no duplicates, got {self.rows}")
        for name in self.rows:
            Variant(name, lambda: None, ())  # checks the naming convention
        unknown = set(self.recipes) - set(self.rows)
        if unknown:
            raise ValueError(f"{self.name}: recipe rows {sorted(unknown)} are not declared rows")

    def setup(self, data: str | None = None) -> tuple[Any, Any, Any]:
        """The table's workload (reading ``data`` where it needs files), its fp32 model and a fresh context."""
        from torchslim.workloads import get_workload

        wl = get_workload(self.workload, data=data)
        model = wl.model()
        return wl, model, wl.context()

    def rounds_for(self, quick: bool) -> int:
        return self.rounds[0] if quick else self.rounds[1]

    def warmup_for(self, quick: bool) -> int:
        return self.warmup[0] if quick else self.warmup[1]

    def run(self, variants: Sequence[Variant], quick: bool, notes: Sequence[str] = ()) -> BenchResult:
        """:func:`run_benchmark` on ``variants`` with this table's timing settings, then ``notes`` appended."""
        result = run_benchmark(
            self.name,
            variants,
            rounds=self.rounds_for(quick),
            warmup=self.warmup_for(quick),
            calls_per_round=self.calls_per_round,
        )
        result.notes.extend(notes)
        return result

    def check(self, result: BenchResult) -> BenchResult:
        """Raise ValueError unless ``result``'s rows are declared rows in declared order, none is missing
        (but peers and ``optional`` ones) and every quality key and extra column is declared."""
        names = [r["variant"] for r in result.rows]
        order = [n for n in self.rows if n in names]
        if names != order:
            raise ValueError(f"{self.name}: rows {names} are not the declared rows {list(self.rows)} in order")
        missing = [n for n in self.rows if n not in names and not n.startswith("peer-") and n not in self.optional]
        if missing:
            raise ValueError(f"{self.name}: declared rows missing from the result: {missing}")
        for r in result.rows:
            metrics = set(r["quality"]) - set(self.metrics)
            columns = set(r) - _ROW_KEYS - set(self.columns)
            if metrics or columns:
                raise ValueError(f"{self.name}: row {r['variant']} has undeclared keys {sorted(metrics | columns)}")
        return result


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads, restoring the caller's setting afterwards.

    Tiny models train and time on one thread: with more, each op pays a synchronisation that costs more
    than its work, and a thread that loses its core stalls every call.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_save_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: a peer's size when its tensors do not fit safetensors.

    Example:
        >>> torch_save_bytes(torch.nn.Linear(4, 2)) > 40
        True
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


class RowBuilder:
    """Builds a benchmark's rows in order, recording each one's build time (``build_s``).

    ``add(name, make)`` calls ``make() -> (model, size_bytes)``; ours must build, a ``peer-`` row whose
    build raises is left out with a note (in :attr:`notes`), and ``make`` returning None leaves the row
    out with the ``missing`` note. ``threads``: build on that many threads; ``warm``: a call run on each
    built model before its build time is taken (compiled models specialise on the timed shape there).

    Example:
        >>> import torch.nn as nn
        >>> rows = RowBuilder()
        >>> rows.add("fp32", lambda: (nn.Linear(2, 2), 24))
        >>> rows.add("peer-broken", lambda: 1 / 0)
        >>> [b[0] for b in rows.built], rows.notes
        (['fp32'], ['peer-broken left out: ZeroDivisionError: division by zero'])
    """

    def __init__(self, threads: int | None = None, warm: Callable[[Any], Any] | None = None) -> None:
        self.threads, self.warm = threads, warm
        self.built: list[tuple[str, Any, int | None, float]] = []  # name, model, size, build seconds
        self.notes: list[str] = []

    def add(self, name: str, make: Callable[[], tuple[Any, int | None] | None], missing: str = "") -> None:
        start = time.perf_counter()
        try:
            with threads(self.threads) if self.threads else contextlib.nullcontext():
                out = make()
        except Exception as e:  # noqa: BLE001 - a peer that fails to build is reported, not fatal
            if not name.startswith("peer-"):
                raise
            log.warning("peer %s unavailable: %s", name, e)
            self.notes.append(f"{name} left out: {type(e).__name__}: {str(e)[:200]}")
            return
        if out is None:
            self.notes.append(f"{name} left out: {missing}")
            return
        model, size = out
        if isinstance(model, torch.nn.Module):
            model.eval()
        if self.warm is not None:
            self.warm(model)
        self.built.append((name, model, size, time.perf_counter() - start))

    def variants(
        self, inputs: tuple[Any, ...], quality: Callable[[Any], Callable[[], dict[str, float]]] | None = None
    ) -> list[Variant]:
        """One :class:`Variant` per built row with ``build_s``; ``quality(model)`` gives its quality callable."""
        return [
            Variant(
                name,
                model,
                inputs,
                size_bytes=size,
                quality=quality(model) if quality else {},
                extra={"build_s": round(seconds, 1)},
            )
            for name, model, size, seconds in self.built
        ]


def macs_reduction(variants: Sequence[Variant]) -> None:
    """Add ``macs_reduction`` (fp32 MACs / the row's, 3 decimals) to variants built with the ``macs`` measure."""
    base = next(v for v in variants if v.name == "fp32").extra["macs"]
    for v in variants:
        v.extra["macs_reduction"] = round(base / v.extra["macs"], 3)


def speedup_column(
    variants: Sequence[Variant], inputs: tuple[Any, ...], key: str, *, rounds: int, warmup: int, n_threads: int = 1
) -> None:
    """Add column ``key``: fp32 median latency over each variant's on ``inputs`` and ``n_threads`` threads,
    timed interleaved in a pass of its own (3 decimals)."""
    with threads(n_threads):
        lat = interleaved_latency({v.name: v.model for v in variants}, inputs, warmup=warmup, rounds=rounds)
    for v in variants:
        v.extra[key] = round(lat["fp32"].median_ms / lat[v.name].median_ms, 3)
