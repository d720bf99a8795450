"""FSDP2 distillation: two ranks sharding the student train as one process does, resume from their
shards, hand back a plain student with the full weights, and "auto" shards when memory is short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.nn as nn
from multiproc import load_worker, needs_gloo, torchrun
from safetensors.torch import load_file

from torchslim.distillation import DistillConfig, train_distill
from torchslim.distillation.sharding import ddp_training_bytes, resolve_parallel, shard_units
from torchslim.errors import ConfigError
from torchslim.workloads.digits import build_student

WORKER = Path(__file__).with_name("fsdp_worker.py")


@needs_gloo
def test_two_sharded_ranks_match_one_process_and_resume_from_their_shards(tmp_path) -> None:
    single = load_worker(WORKER, "fsdp_worker").run()
    out, ckpt = tmp_path / "fsdp.json", tmp_path / "ckpt"
    ckpt.mkdir()
    proc = torchrun([str(WORKER), str(out), str(ckpt)], 2, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp = json.loads(out.read_text())
    assert fsdp["world_size"] == 2
    for mode in ("dataset", "callable"):
        ref, got = single[mode], fsdp[mode]
        assert ref["parallel"] == "none" and got["parallel"] == "fsdp"
        assert len(got["losses"]) == len(ref["losses"]) == 16 and len(got["evals"]) == 4
        # Same global batches, gradients averaged by reduce-scatter: equal up to float summation order.
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-4, abs=1e-6)
        assert got["evals"] == pytest.approx(ref["evals"], rel=1e-4, abs=1e-6)
        for a, b in zip(got["weights"], ref["weights"], strict=True):
            assert a == pytest.approx(b, rel=1e-3, abs=1e-5)
        # eval_fn saw the sharded student (half of inp's 8 rows on rank 0); the caller gets its own
        # module back with plain full parameters.
        assert all(s == {"dtensor": True, "local_rows": 4} for s in got["seen"])
        assert all(s == {"dtensor": False, "local_rows": 8} for s in ref["seen"])
        assert got["student_class"] == "Student" and got["same_object"] and got["param_types"] == ["Parameter"]
    assert fsdp["ddp"] == "ddp" and fsdp["auto"] == "fsdp"
    # Ctrl-C at step 11: each rank wrote its own shards; the rerun continues to the same losses and weights.
    assert fsdp["interrupted"] and fsdp["files"] == [
        "distill-checkpoint-rank0-of-2.pt",
        "distill-checkpoint-rank1-of-2.pt",
    ]
    full, resumed = fsdp["callable"], fsdp["resumed"]
    assert resumed["losses"] == pytest.approx(full["losses"], rel=1e-6, abs=1e-7)
    for a, b in zip(resumed["weights"], full["weights"], strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    assert "not from one step (rank 0: step 16, rank 1: none)" in fsdp["mismatch"]


@needs_gloo
def test_the_cli_under_torchrun_shards_and_writes_the_full_student(tmp_path) -> None:
    out, js = tmp_path / "student", tmp_path / "run.json"
    args = ["-m", "torchslim", "distill", "--workload", "digits", "--epochs", "1", "--lr", "0.01"]
    proc = torchrun([*args, "--parallel", "fsdp", "--out", str(out), "--json", str(js)], 2, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(js.read_text())
    assert record["processes"] == 2 and record["parallel"] == "fsdp" and record["steps"] == 17
    # Rank 0 wrote the whole student, not its shard: every tensor has the shape of a fresh one.
    fresh = build_student().state_dict()
    state = load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.items()}


def test_parallel_modes_outside_a_process_group() -> None:
    student, teacher = nn.Linear(4, 2), nn.Linear(4, 2)
    assert resolve_parallel("auto", student, teacher) == ("none", "")
    assert resolve_parallel("ddp", student, teacher) == ("none", "")
    with pytest.raises(ConfigError, match="torchrun"):
        resolve_parallel("fsdp", student, teacher)
    with pytest.raises(ConfigError, match="one of auto, ddp, fsdp"):
        train_distill(student, teacher, lambda: [], DistillConfig(epochs=1), parallel="zero", progress=False)


def test_shard_units_are_the_outermost_module_list_elements() -> None:
    inner = nn.ModuleList([nn.Linear(2, 2)])
    block = nn.Sequential(nn.Linear(2, 2), inner)
    model = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([block, nn.ReLU(), nn.Linear(2, 2)]))
    # Elements without parameters are not units; a list inside a unit is sharded with it.
    assert shard_units(model) == [block, model[1][2]]
    assert shard_units(nn.Sequential(nn.Linear(2, 2))) == []


def test_ddp_training_bytes_counts_gradients_moments_buckets_and_best_weights() -> None:
    model = nn.Linear(10, 10)  # 110 float32 parameters: 440 bytes
    model.bias.requires_grad_(False)
    assert ddp_training_bytes(model) == 4 * 400 + 440
