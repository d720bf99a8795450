"""Tests for the digits workload: fixed split, trained + cached teacher, evaluation, registry lookup."""

from __future__ import annotations

import time

import pytest
import torch

from torchslim.errors import UsageError
from torchslim.workloads import WORKLOADS, get_workload, workload_names
from torchslim.workloads.digits import (
    DigitsCNN,
    DigitsWorkload,
    build_student,
    build_teacher,
    example_inputs,
    load_splits,
)


@pytest.fixture(scope="module")
def wl() -> DigitsWorkload:
    return DigitsWorkload()


@pytest.fixture(scope="module")
def teacher(wl: DigitsWorkload) -> torch.nn.Module:
    return wl.model()  # trains once (seconds) on a cold cache, then loads


def test_split_sizes_disjoint_and_stratified() -> None:
    s = load_splits()
    sizes = {k: s[f"{k}_x"].shape[0] for k in ("train", "val", "test")}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    for k in ("train", "val", "test"):
        assert s[f"{k}_x"].shape[1:] == (1, 8, 8)
        assert s[f"{k}_x"].dtype == torch.float32
        assert 0.0 <= float(s[f"{k}_x"].min()) and float(s[f"{k}_x"].max()) <= 1.0
        assert s[f"{k}_y"].shape[0] == sizes[k]
        # Stratified: every class present in roughly its overall proportion (~10%).
        counts = torch.bincount(s[f"{k}_y"], minlength=10).float() / sizes[k]
        assert float(counts.min()) > 0.08 and float(counts.max()) < 0.12
    # Disjoint: no image row appears in two splits (the raw data has no exact duplicates across them).
    rows = {k: {tuple(r.tolist()) for r in s[f"{k}_x"].flatten(1)} for k in ("train", "val", "test")}
    assert not rows["train"] & rows["test"]
    assert not rows["train"] & rows["val"]
    assert not rows["val"] & rows["test"]


def test_split_is_deterministic() -> None:
    a = load_splits()
    load_splits.cache_clear()
    b = load_splits()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_data_is_seeded_and_covers_train_split(wl: DigitsWorkload) -> None:
    s = load_splits()
    make_a, make_b = wl.train_data(), wl.train_data()
    epoch_a0, epoch_a1 = list(make_a()), list(make_a())
    epoch_b0 = list(make_b())
    assert len(epoch_a0) == 17 and epoch_a0[0][0].shape == (64, 1, 8, 8)
    assert all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(epoch_a0, epoch_b0, strict=True)
    )
    assert not torch.equal(epoch_a0[0][1], epoch_a1[0][1])  # later epochs reshuffle
    ys = torch.cat([y for _, y in epoch_a0])
    assert torch.equal(torch.bincount(ys, minlength=10), torch.bincount(s["train_y"], minlength=10))
    # Augmented batches keep shape and value range, and differ from the clean images.
    xa, _ = next(iter(wl.train_data(augment=True)()))
    xc, _ = next(iter(wl.train_data()()))
    assert xa.shape == xc.shape and float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    assert not torch.equal(xa, xc)


def test_calibration_and_example_inputs(wl: DigitsWorkload) -> None:
    cal = wl.calibration(8)
    assert len(cal) == 8
    assert all(isinstance(b, tuple) and b[0].shape == (32, 1, 8, 8) for b in cal)
    (ex,) = example_inputs()
    assert ex.shape == (64, 1, 8, 8)
    assert torch.equal(ex, load_splits()["test_x"][:64])
    assert torch.equal(wl.example_inputs()[0], ex)


def test_architectures_trace_and_shapes() -> None:
    ex = example_inputs()
    for model in (build_teacher(), build_student()):
        model.eval()
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(*ex), model(*ex))
        assert model(*ex).shape == (64, 10)
    n_teacher = sum(p.numel() for p in build_teacher().parameters())
    n_student = sum(p.numel() for p in build_student().parameters())
    assert n_student * 20 < n_teacher


def test_teacher_prunable_with_torch_pruning() -> None:
    tp = pytest.importorskip("torch_pruning")
    model = build_teacher().eval()
    ex = example_inputs()
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(
        model,
        ex,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    assert model(*ex).shape == (64, 10)
    assert sum(p.numel() for p in model.parameters()) < 0.4 * before


def test_teacher_accuracy(wl: DigitsWorkload, teacher: torch.nn.Module) -> None:
    assert isinstance(teacher, DigitsCNN) and not teacher.training
    assert wl.cache_path().is_file()
    test_acc = wl.evaluate(teacher, "test")["accuracy"]
    assert test_acc >= 0.97
    assert wl.evaluate(teacher, "val")["accuracy"] >= 0.97
    # An untrained model is near chance: the metric measures something.
    assert wl.evaluate(build_teacher(), "test")["accuracy"] < 0.5


def test_cached_reload_identical_and_fast(wl: DigitsWorkload, teacher: torch.nn.Module) -> None:
    start = time.perf_counter()
    again = DigitsWorkload().model()  # new instance: must read the safetensors cache, not retrain
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert again is not teacher  # fresh copy: in-place compression can't alter the baseline
    (ex,) = example_inputs()
    with torch.inference_mode():
        assert torch.equal(again(ex), teacher(ex))


def test_evaluate_restores_mode_and_handles_bf16(wl: DigitsWorkload, teacher: torch.nn.Module) -> None:
    model = DigitsWorkload().model()
    model.train()
    res = wl.evaluate(model, "test")
    assert model.training
    assert set(res) == {"accuracy"} and 0.0 <= res["accuracy"] <= 1.0
    bf16 = wl.evaluate(DigitsWorkload().model().to(torch.bfloat16), "test")["accuracy"]
    assert bf16 >= wl.evaluate(teacher, "test")["accuracy"] - 0.02
    with pytest.raises(ValueError, match="test"):
        wl.evaluate(teacher, "holdout")


def test_context_wiring(wl: DigitsWorkload, teacher: torch.nn.Module) -> None:
    ctx = wl.context(seed=3)
    assert ctx.seed == 3 and ctx.example_inputs[0].shape == (64, 1, 8, 8)
    assert len(ctx.calibration) == 8 and callable(ctx.train_data)
    assert ctx.eval_fn(teacher) == wl.evaluate(teacher, "test")


def test_registry_lookup() -> None:
    assert "digits" in WORKLOADS and workload_names() == sorted(WORKLOADS)
    wl = get_workload("digits", data=None)
    assert isinstance(wl, DigitsWorkload)
    assert (wl.name, wl.metric, wl.higher_is_better) == ("digits", "accuracy", True)
    with pytest.raises(UsageError, match="digits") as info:
        get_workload("no-such-workload")
    assert info.value.exit_code == 2
    assert "no-such-workload" in str(info.value)


def test_cold_training_is_deterministic_and_replaces_corrupt_cache(tmp_path, monkeypatch) -> None:
    """Two cold trainings give the same teacher, also when the callers run on different thread counts (the
    thread count changes float reductions: the teacher trains on a fixed one); a corrupt cache is replaced."""
    states = []
    outer = torch.get_num_threads()
    for run, caller_threads in (("a", 1), ("b", 3)):
        monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path / run))
        wl = DigitsWorkload()
        if run == "b":  # a corrupt cache file is detected and replaced, never trusted
            wl.cache_path().parent.mkdir(parents=True, exist_ok=True)
            wl.cache_path().write_bytes(b"not a safetensors file")
        rng_before = torch.get_rng_state()
        torch.set_num_threads(caller_threads)
        try:
            model = wl.model()  # cold (or corrupt) cache: trains
            assert torch.get_num_threads() == caller_threads  # the caller's setting is restored
        finally:
            torch.set_num_threads(outer)
        assert torch.equal(torch.get_rng_state(), rng_before)  # no process-global side effect
        assert wl.cache_path().is_file() and wl.cache_path().is_relative_to(tmp_path / run)
        assert not list(wl.cache_path().parent.glob("*.tmp"))  # the temp file was renamed into place
        states.append(model.state_dict())
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name
