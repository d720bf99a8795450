"""TuneOptions: tune's options validated in one place; the CLI builds them from its flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from torchslim.errors import ConfigError, UsageError
from torchslim.tuning import TuneOptions, tune


def test_every_invalid_option_is_listed() -> None:
    bad = {"max_drop": float("nan"), "trials": 0, "confirm": -1, "margin": -0.5, "latency_runs": 0, "threads": 0,
           "heartbeat_interval": 5, "grace_period": 5, "builtins": "int8-dynamic", "seed": 1.5}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        TuneOptions(out="out", **bad)
    named = {p.split(":")[0] for p in e.value.problems}
    expected = {"max_drop", "trials", "confirm", "margin", "latency_runs", "threads"}
    assert named == expected | {"heartbeat_interval", "builtins", "seed"}


def test_unknown_objective_is_a_usage_error_and_options_are_frozen() -> None:
    with pytest.raises(UsageError, match="objective"):
        TuneOptions(max_drop=0.01, out="out", objective="speed")
    options = TuneOptions(max_drop=0.01, out="out")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.trials = 3  # type: ignore[misc]
    assert dataclasses.replace(options, trials=3).trials == 3


def test_tune_takes_options_not_keywords(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="TuneOptions"):
        tune("digits", {"max_drop": 0.01, "out": tmp_path})  # type: ignore[arg-type]


def test_cli_passes_its_flags_as_tune_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    tune_module = importlib.import_module("torchslim.tuning.tune")
    from torchslim.cli import main

    seen: list[TuneOptions] = []

    def fake_tune(wl, options, *, model=None):  # stops before any work: the options are what is checked
        seen.append(options)
        raise UsageError("stop")

    monkeypatch.setattr(tune_module, "tune", fake_tune)
    argv = ["tune", "--workload", "digits", "--out", str(tmp_path), "--max-drop", "0.02", "--trials", "7",
            "--objective", "both", "--builtins", "none", "--confirm", "0", "--margin", "0.5", "--no-progress",
            "--no-preflight"]  # fmt: skip
    assert main(argv) == 2
    (options,) = seen
    assert (options.max_drop, options.trials, options.objective, options.builtins) == (0.02, 7, "both", [])
    assert (options.confirm, options.margin, options.progress, options.out) == (0, 0.5, False, str(tmp_path))
    assert main([*argv[:-1], "--heartbeat", "30"]) == 3  # heartbeat not below the grace period: before any work
    assert len(seen) == 1
