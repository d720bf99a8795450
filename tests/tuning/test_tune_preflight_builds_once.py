"""``torchslim tune``'s memory preflight estimates on the model tune then takes as its baseline: built once."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from torchslim.errors import UsageError

USER_SRC = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    from torchslim.workloads import Workload

    BUILT = []


    class Counted(Workload):
        name, metric = "counted", "score"

        def __init__(self, data=None):
            self.x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))

        def factory(self):
            return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

        def model(self):
            BUILT.append(self.factory().eval())
            return BUILT[-1]

        def example_inputs(self):
            return (self.x,)

        def calibration(self, n_batches=8):
            return [(self.x,)]

        def evaluate(self, model, split="test"):
            return {"score": 1.0}
    """
)


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The user module (its ``BUILT`` list grows by one per model build) and what the fake ``tune`` saw."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "countedwl", raising=False)
    (tmp_path / "countedwl.py").write_text(USER_SRC, encoding="utf-8")
    monkeypatch.delenv("TORCHSLIM_NO_PREFLIGHT", raising=False)
    monkeypatch.setenv("TORCHSLIM_MEMORY_LIMIT", "64G")  # the estimate fits
    seen: dict[str, object] = {}

    def fake_tune(wl, options, *, model=None):  # takes its baseline as tune does, then stops before any search
        seen["name"], seen["baseline"] = wl.name, wl.model() if model is None else model
        seen["later"] = wl.model()
        raise UsageError("stop")

    monkeypatch.setattr(importlib.import_module("torchslim.tuning.tune"), "tune", fake_tune)
    yield seen
    sys.modules.pop("countedwl", None)


def _tune(tmp_path: Path, *extra: str) -> int:
    from torchslim.cli import main

    argv = ["tune", "--workload", "countedwl:Counted", "--max-drop", "0.1", "--trials", "1"]
    return main([*argv, "--out", str(tmp_path / "out"), *extra])


def test_preflight_model_is_the_baseline_tune_gets(counted, tmp_path, monkeypatch) -> None:
    memory = importlib.import_module("torchslim.measure.memory")

    estimated = []
    real = memory.estimate_tune
    monkeypatch.setattr(memory, "estimate_tune", lambda model, *a: estimated.append(model) or real(model, *a))
    assert _tune(tmp_path) == 2  # the fake tune's stop
    built = sys.modules["countedwl"].BUILT
    assert counted["name"] == "counted"  # the workload's own attributes
    assert estimated == [built[0]] and counted["baseline"] is built[0]  # one build for estimate and baseline
    assert counted["later"] is built[1] and len(built) == 2  # a later call builds afresh


def test_without_preflight_tune_builds_its_own(counted, tmp_path) -> None:
    assert _tune(tmp_path, "--no-preflight") == 2
    built = sys.modules["countedwl"].BUILT
    assert counted["baseline"] is built[0] and len(built) == 2
