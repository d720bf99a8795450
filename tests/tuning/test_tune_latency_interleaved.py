"""``tune``'s latency under a changing machine load: every model is timed round-robin with the baseline model,
and the ``latency`` objective reads ``baseline latency at the start / speedup``, which the load does not move.

The clock of :mod:`torchslim.measure.latency` is replaced by a fake one that each timed call advances by the
model's cost times the machine's load, so the figures are exact and the tests take no real time to measure.
"""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import torch.nn as nn
from optuna.trial import TrialState

from torchslim.measure import measure_latency, relative_latency
from torchslim.tuning.options import TuneOptions
from torchslim.tuning.space import SearchSpace
from torchslim.tuning.tune import tune

latency_module = importlib.import_module("torchslim.measure.latency")


class _Clock:
    """A fake ``time`` module: ``perf_counter`` in seconds, advanced by the models' calls."""

    def __init__(self) -> None:
        self.now = 0.0
        self.load = 1.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, ms: float) -> None:
        self.now += ms * self.load / 1e3


class _Costly(nn.Module):
    """A model whose call takes ``ms`` milliseconds of the fake clock at load 1; the load changes after
    ``switch_after`` calls of any ``_Costly`` sharing ``calls`` (a machine slowing down mid-run)."""

    def __init__(self, clock: _Clock, ms: float, calls: list[int], switch_after: int, load: float) -> None:
        super().__init__()
        self.clock, self.ms, self.calls, self.switch_after, self.new_load = clock, ms, calls, switch_after, load
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls[0] += 1
        if self.calls[0] > self.switch_after:
            self.clock.load = self.new_load
        self.clock.spend(self.ms)
        return x


def test_speedup_and_normalised_latency_stay_right_when_the_load_changes_mid_run(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(latency_module, "time", clock)
    calls = [0]
    base = _Costly(clock, 2.0, calls, switch_after=10**9, load=1.0)
    x = (torch.zeros(1),)
    baseline_ms = measure_latency(base, x, warmup=1, runs=5).median_ms  # the quiet machine, at the start
    assert baseline_ms == pytest.approx(2.0)
    # The trial's model is 4x faster; the machine becomes 4x slower after the warm-up and two rounds.
    calls[0] = 0
    trial = _Costly(clock, 0.5, calls, switch_after=2 + 2 * 2, load=4.0)
    base.switch_after, base.new_load = trial.switch_after, 4.0
    r = relative_latency(trial, base, x, baseline_ms, runs=5, warmup=1)
    assert r["raw_latency_ms"] == pytest.approx(2.0)  # median of 0.5, 0.5, 2, 2, 2: the raw figure drifted 4x
    assert r["baseline_raw_ms"] == pytest.approx(8.0)
    assert r["speedup"] == pytest.approx(4.0)
    assert r["latency_ms"] == pytest.approx(0.5)  # 2.0 ms at the start / 4x


def _cost(model: nn.Module) -> float:
    """The fake time of one call: the bytes of the model's floating-point weights (bf16 halves it)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point()) / 1e3


def test_tune_trials_builtins_and_report_use_the_interleaved_speedup(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    clock = _Clock()
    # The load falls from call to call of interleaved_latency: 100 for the baseline at the start, 50 for the
    # first trial, 1 afterwards. Raw medians would make the last trial look 25x faster than the first.
    loads = iter([100.0, 50.0])
    original = latency_module.interleaved_latency

    def interleaved(models, example_inputs, **kw):
        clock.load = next(loads, 1.0)
        return original(models, example_inputs, **kw)

    monkeypatch.setattr(latency_module, "time", clock)
    monkeypatch.setattr(latency_module, "interleaved_latency", interleaved)
    monkeypatch.setattr(latency_module, "_bound", lambda model, inputs: lambda: clock.spend(_cost(model)))

    space = SearchSpace(prune_methods=("none",), recovery=("none",), quant=("none", "bf16"))
    options = TuneOptions(max_drop=1.0, trials=2, out=tmp_path, space=space, progress=False, builtins=("bf16",),
                          objective="latency", latency_runs=3, confirm=0)  # fmt: skip
    result = tune("digits", options)
    base_ms = result.baseline["latency_ms"]
    trials = [t for t in result.study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(trials) == 2
    bf16, plain = sorted(trials, key=lambda t: t.user_attrs["latency_ms"])
    assert bf16.user_attrs["speedup"] == pytest.approx(2.0)
    assert bf16.user_attrs["latency_ms"] == pytest.approx(base_ms / 2)
    assert bf16.user_attrs["raw_latency_ms"] == pytest.approx(base_ms / 2 / 2)  # measured at half the load
    assert plain.user_attrs["speedup"] == pytest.approx(1.0)
    assert plain.user_attrs["latency_ms"] == pytest.approx(base_ms)
    assert plain.user_attrs["raw_latency_ms"] == pytest.approx(base_ms / 100)  # load 1: raw looks 100x faster
    # The dominance check reads the normalised figure: the unchanged model cannot beat the bf16 one.
    assert plain.number > bf16.number and plain.user_attrs.get("cut_short")
    assert plain.user_attrs["prune_reason"] == f"cannot beat feasible trial {bf16.number}"
    (row,) = result.builtins
    assert row["speedup"] == pytest.approx(2.0) and row["latency_ms"] == pytest.approx(base_ms / 2)
    assert row["raw_latency_ms"] == pytest.approx(row["baseline_raw_ms"] / 2)

    saved = json.loads((tmp_path / "trials.json").read_text())
    assert saved["builtins"][0]["speedup"] == pytest.approx(2.0)
    assert {r["number"]: r["speedup"] for r in saved["trials"] if r["state"] == "COMPLETE"} == pytest.approx(
        {bf16.number: 2.0, plain.number: 1.0}
    )
    report = (tmp_path / "report.md").read_text()
    assert "| recipe | size KB | latency ms | speedup | val | test | drop | within budget |" in report
    assert f"| bf16 | {row['size_bytes'] / 1e3:.1f} | {base_ms / 2:.3f} | 2.00x |" in report
    assert f"| {bf16.number} | {bf16.user_attrs['description']} | " in report
    assert f" | {base_ms / 2:.3f} | 2.00x | " in report.split("## Best feasible trial")[1]
    assert f"({2.0:.2f}x faster)" in report


def test_report_rows_without_a_speedup_show_a_dash():
    from torchslim.tuning.report import _table

    (header, _, row) = _table([{"number": 3, "latency_ms": 1.5, "size_bytes": 1000}], with_test=False)
    assert header.split(" | ")[4] == "speedup" and row.split(" | ")[3:5] == ["1.500", "-"]


def test_no_copy_of_the_baseline_is_timed_in_a_relative_latency_call(monkeypatch):
    seen = []
    original = latency_module.interleaved_latency

    def spy(models, example_inputs, **kw):
        seen.append(dict(models))
        return original(models, example_inputs, **kw)

    monkeypatch.setattr(latency_module, "interleaved_latency", spy)
    base, model = nn.Linear(4, 4), nn.Linear(4, 2)
    relative_latency(model, base, (torch.zeros(1, 4),), 1.0, runs=2, warmup=0)
    assert len(seen) == 1 and seen[0]["baseline"] is base and seen[0]["model"] is model
