"""Progress reporting (torchslim.core.progress): plain lines off a terminal, rich bars on one, quiet when off."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn as nn
from rich.console import Console

from torchslim.core import progress as progress_mod
from torchslim.core.context import Context
from torchslim.core.progress import (
    ENV_INTERVAL,
    ENV_MODE,
    eta_seconds,
    format_duration,
    progress,
    progress_line,
    rate,
    resolve_interval,
    resolve_mode,
)
from torchslim.errors import ConfigError


class FakeClock:
    """A clock the test moves by hand: no sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # Every test decides the mode itself; a developer's terminal settings must not leak in.
    for name in (ENV_MODE, ENV_INTERVAL, "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    yield
    assert progress_mod._ACTIVE.get() == (), "a task was left active"


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln]


# --- pure formatting ---


def test_format_duration_scales_units():
    assert format_duration(0.041) == "0.04 s"
    assert format_duration(14.24) == "14.2 s"
    assert format_duration(33.4, decimals=0) == "33 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3725) == "1 h 02 min"
    assert format_duration(-1) == "0.00 s"


def test_eta_and_rate():
    assert eta_seconds(10, 40, 5.0) == 15.0
    assert eta_seconds(0, 40, 5.0) is None
    assert eta_seconds(3, None, 5.0) is None
    assert rate(30, 12.0) == 2.5
    assert rate(3, 0.0) is None


def test_progress_line_with_and_without_total():
    assert progress_line("calibration", 12, 40, "batches", 14.2) == (
        "calibration 12/40 batches (30%), 14.2 s elapsed, ~33 s left"
    )
    assert progress_line("distill", 30, None, "steps", 12.0, status="loss 0.4210") == (
        "distill 30 steps, 12.0 s elapsed, 2.5 steps/s; loss 0.4210"
    )
    # Resumed at 20/40: the pace is 10 steps in 5 s, so 10 left take 5 s (not 20/5 s → 2.5 s).
    assert progress_line("d", 30, 40, "steps", 5.0, skipped=20).endswith("~5 s left")


def test_settings_from_env_are_validated():
    assert resolve_mode({}) == "auto"
    assert resolve_mode({ENV_MODE: "OFF"}) == "off"
    assert resolve_interval({ENV_INTERVAL: "0.5"}) == 0.5
    with pytest.raises(ConfigError, match=ENV_MODE) as e:
        resolve_mode({ENV_MODE: "loud"})
    assert e.value.exit_code == 3
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(ConfigError, match=ENV_INTERVAL):
            resolve_interval({ENV_INTERVAL: bad})


# --- plain mode ---


def test_plain_prints_start_periodic_and_end_lines_with_time_left():
    clock, out = FakeClock(), io.StringIO()
    with progress(40, "calibration", unit="batches", mode="plain", clock=clock, stream=out) as bar:
        for _ in range(12):
            clock.now += 1.0  # 1 s per batch: a line once 10 s have passed since the start line
            bar.advance()
        clock.now += 20.0
        bar.advance(28)
    assert lines(out.getvalue()) == [
        "torchslim: calibration started (40 batches)",
        "torchslim: calibration 10/40 batches (25%), 10.0 s elapsed, ~30 s left",
        "torchslim: calibration done: 40 batches in 32.0 s",
    ]


def test_plain_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_INTERVAL, "2")
    clock, out = FakeClock(), io.StringIO()
    with progress(6, "gptq", unit="layers", mode="plain", clock=clock, stream=out) as bar:
        for i in range(6):
            clock.now += 1.0
            bar.advance(status=f"fc{i}")
    periodic = [ln for ln in lines(out.getvalue()) if "elapsed" in ln]
    # Every 2 s; none at 6/6, where the end line follows at once.
    assert [ln.split(" layers")[0] for ln in periodic] == ["torchslim: gptq 2/6", "torchslim: gptq 4/6"]
    assert periodic[0].endswith("~4 s left; fc1")


def test_auto_off_a_terminal_is_plain_on_stderr(capsys):
    for _ in progress(range(3), "calibration", unit="batches"):
        pass
    captured = capsys.readouterr()
    assert captured.out == ""
    assert lines(captured.err)[0] == "torchslim: calibration started (3 batches)"
    assert re.fullmatch(r"torchslim: calibration done: 3 batches in \d+\.\d+ s", lines(captured.err)[-1])


def test_off_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv(ENV_MODE, "off")
    with progress(3, "recipe x", unit="steps") as bar:
        bar.note("step 1 started")
        for _ in progress(range(3), "calibration", unit="batches"):
            bar.advance()
    progress_mod.note("anything")
    assert capsys.readouterr() == ("", "")


def test_disabled_task_silences_what_runs_inside_it(capsys):
    with progress(2, "tune", enabled=False, mode="plain"):
        for _ in progress(range(3), "calibration", unit="batches", mode="plain"):
            pass
    assert capsys.readouterr().err == ""


def test_nested_tasks_are_prefixed_and_short_ones_stay_quiet():
    clock, out = FakeClock(), io.StringIO()
    with progress(2, "recipe r", unit="steps", mode="plain", clock=clock, stream=out) as recipe:
        recipe.update(status="step 1/2 int4")
        with progress(4, "int4 gptq", unit="layers") as layers:
            for i in range(4):
                for _ in progress(range(2), "calibration", unit="batches"):
                    clock.now += 2.0  # each calibration pass is short (4 s)
                layers.advance(status=f"fc{i}")
        recipe.advance()
        with progress(1, "fine-tune", unit="epochs") as long_child:
            clock.now += 25.0
            long_child.advance()
        recipe.advance()
    got = lines(out.getvalue())
    assert got[0] == "torchslim: recipe r started (2 steps)"
    assert got[-1].startswith("torchslim: recipe r done: 2 steps in")
    assert "torchslim: recipe r (step 1/2 int4) > int4 gptq (fc1) > calibration 1/2 batches" in got[1]
    assert not any("started" in ln for ln in got[1:]), "nested tasks print no start lines"
    # The short calibration passes print no end lines; a nested task longer than the interval does.
    assert not any("calibration done" in ln for ln in got)
    assert any(ln.startswith("torchslim: recipe r (step 1/2 int4) > fine-tune done: 1 epochs in 25.0 s") for ln in got)


def test_iterator_broken_off_early_says_so_and_cleans_up():
    out = io.StringIO()
    for i in progress(range(10), "calibration", unit="batches", mode="plain", stream=out):
        if i == 2:
            break
    assert lines(out.getvalue())[-1].startswith("torchslim: calibration stopped after 2/10 batches")


def test_error_inside_a_task_is_reported_and_leaves_no_active_task():
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with progress(5, "gptq", unit="layers", mode="plain", stream=out) as bar:
            bar.advance()
            raise RuntimeError("boom")
    assert "gptq stopped by an error after 1 layers" in out.getvalue()


# --- rich mode ---


def test_rich_mode_on_a_terminal_draws_nested_bars_with_time_left():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, force_interactive=True, width=140)
    with progress(2, "recipe demo", unit="steps", console=console) as bar:
        bar.note("recipe demo: step 1/2 started")
        for _ in progress(range(3), "calibration", unit="batches"):
            pass
        bar.advance(2, status="all done")
    text = buf.getvalue()
    assert "recipe demo: step 1/2 started" in text
    assert "calibration" in text and "2/2" in text and "eta" in text
    assert "torchslim:" not in text  # bars, not plain lines


# --- where the library reports ---


def _tiny_recipe_run(**kwargs):
    from torchslim.recipes.recipe import recipe_from_dict, run_recipe

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    recipe = recipe_from_dict(
        {"name": "tiny", "steps": [{"kind": "magnitude-pruning", "sparsity": 0.5}, {"kind": "int8-dynamic"}]}
    )
    ctx = Context(example_inputs=(torch.randn(2, 16),))
    return run_recipe(model, recipe, ctx, **({"measure_steps": False} | kwargs))


def test_run_recipe_off_a_terminal_prints_a_line_per_step_start_and_end(capsys):
    _, run = _tiny_recipe_run()
    err = lines(capsys.readouterr().err)
    for i, step in enumerate(run.steps, 1):
        assert f"torchslim: recipe tiny: step {i}/2 {step.name} started" in err
        assert any(
            re.fullmatch(rf"torchslim: recipe tiny: step {i}/2 {step.name} done in \d+\.\d+ s", ln) for ln in err
        )
    assert err[0] == "torchslim: recipe tiny started (2 steps)"
    assert err[-1].startswith("torchslim: recipe tiny done: 2 steps in")


def test_run_recipe_reports_the_baseline_measurement_and_measuring_time(capsys):
    _tiny_recipe_run(measure_steps=True, latency_runs=2)
    err = lines(capsys.readouterr().err)
    assert err[1] == "torchslim: recipe tiny: measuring the baseline"
    assert re.fullmatch(r"torchslim: recipe tiny: baseline measured in \d+\.\d+ s", err[2])
    assert re.search(r"step 2/2 int8-dynamic done in \d+\.\d+ s \(\+\d+\.\d+ s measuring\)$", err[-2])


def test_run_recipe_progress_false_is_silent(capsys):
    _tiny_recipe_run(progress=False)
    assert capsys.readouterr().err == ""


def test_fit_reports_training_steps_off_a_terminal(capsys):
    from torchslim.training import fit_

    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    fit_(nn.Linear(4, 2), lambda: [(x, y), (x, y)], epochs=2, desc="fine-tuning")
    err = lines(capsys.readouterr().err)
    assert err[0] == "torchslim: fine-tuning started (4 steps)"
    assert err[-1].startswith("torchslim: fine-tuning done: 4 steps in")


def test_distillation_reports_its_steps_off_a_terminal(capsys):
    from torchslim.distillation.config import DistillConfig
    from torchslim.distillation.trainer import train_distill

    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    train_distill(nn.Linear(4, 2), nn.Linear(4, 2), lambda: [(x, y)], DistillConfig(epochs=3), desc="distill tiny")
    err = lines(capsys.readouterr().err)
    assert err[0] == "torchslim: distill tiny started (3 steps)"
    assert err[-1].startswith("torchslim: distill tiny done: 3 steps in")
