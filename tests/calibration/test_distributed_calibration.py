"""Calibration split over torchrun ranks gives the single-process artifact (gloo on 127.0.0.1)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from multiproc import load_worker, needs_gloo, torchrun, torchrun_env

from torchslim.calibration.compensated import CompensatedSum
from torchslim.calibration.distributed import distributed_calibration, interleave, shard_of

WORKER = Path(__file__).with_name("distributed_worker.py")


def _worker():
    return load_worker(WORKER, "distributed_calibration_worker")


def test_compensated_sum_does_not_depend_on_order_or_split():
    g = torch.Generator().manual_seed(0)
    # Terms of mixed signs and magnitudes: a plain float64 sum changes with the order here.
    terms = [torch.randn(64, generator=g, dtype=torch.float64) * 10.0 ** float(e) for e in range(-8, 9)] * 3
    plain = []
    compensated = []
    for seed in range(4):
        order = terms[:]
        random.Random(seed).shuffle(order)
        plain.append(sum(order))
        halves = [CompensatedSum(), CompensatedSum()]
        for i, t in enumerate(order):
            halves[i % 2].add(t)  # two "ranks", merged as distributed calibration does
        halves[0].merge(halves[1])
        compensated.append(halves[0].value())
    assert not all(torch.equal(plain[0], p) for p in plain[1:])  # the problem is real for these terms
    assert all(torch.equal(compensated[0], c) for c in compensated[1:])
    exact = sum(float(t[0]) for t in terms)  # loose: Python floats are also rounded
    assert float(compensated[0][0]) == pytest.approx(exact, rel=1e-12)


def test_shard_and_interleave_are_inverse_and_inactive_without_a_group():
    assert shard_of([1, 2, 3]) == [1, 2, 3]
    with distributed_calibration() as shard:  # no process group: one process, nothing split
        assert (shard.rank, shard.world_size) == (0, 1)
        assert shard_of([1, 2, 3]) == [1, 2, 3]
    batches = list(range(7))
    parts = [batches[r::3] for r in range(3)]
    assert interleave(parts) == batches


@needs_gloo
def test_two_ranks_give_the_single_process_artifact(tmp_path):
    from safetensors.torch import load_file

    worker = _worker()
    single = worker.run()
    out = tmp_path / "ranks.safetensors"
    proc = torchrun([str(WORKER), str(out)], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = load_file(out)
    assert set(split) == set(single)
    assert int(split["stats/0.count"]) == sum(b.shape[0] for b in worker.calibration())
    for recipe in worker.RECIPES:
        assert any(k.startswith(f"{recipe}/") for k in split), recipe
    # Bit-identical: the Hessians and norms (a plain float64 sum differs here in the last bits) are
    # compensated sums merged in rank order; SmoothQuant sees the same rows in the same order.
    different = [k for k in single if not torch.equal(split[k], single[k])]
    assert not different, different


WORKLOAD_SRC = """
import torch
import torch.nn as nn

from torchslim.workloads import Workload


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 8))


class Mlp(Workload):
    name, metric = "mlp", "agreement"

    def __init__(self, data=None):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(80, 64, generator=gen) @ torch.randn(64, 64, generator=gen)

    def factory(self):
        return build()

    def model(self):
        return build().eval()

    def example_inputs(self):
        return (self.x[:4],)

    def calibration(self, n_batches=8):
        return [self.x[i : i + 16] for i in range(0, 80, 16)][:n_batches]

    @torch.no_grad()
    def evaluate(self, model, split="test"):
        ref = build().eval()(self.x).argmax(1)
        return {"agreement": (model.eval()(self.x).argmax(1) == ref).float().mean().item()}


MLP = Mlp()
"""

RECIPE = """name: wanda-gptq
seed: 0
steps:
  - kind: wanda-pruning
    sparsity: 0.5
    keep_first_last: false
  - kind: int4-weight-only
    group_size: 32
    method: gptq
"""


@pytest.mark.slow  # two interpreters and a torchrun launch: ~30 s
@needs_gloo
def test_torchrun_compress_writes_the_single_process_artifact_from_rank_0(tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "mlp_workload.py").write_text(WORKLOAD_SRC, encoding="utf-8")
    (tmp_path / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    env = torchrun_env(TORCHSLIM_PROGRESS="off")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    args = ["-m", "torchslim", "compress", "--workload", "mlp_workload:MLP", "--recipe", "recipe.yaml"]
    args += ["--latency-runs", "2"]
    one = subprocess.run(
        [sys.executable, *args, "--out", "one"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([*args, "--out", "two"], 2, timeout=180, cwd=tmp_path, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote two") == 1  # rank 0 alone prints and writes
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_gloo
def test_a_rank_without_batches_still_gets_the_single_process_statistics():
    worker = WORKER.with_name("few_batches_worker.py")
    proc = torchrun([str(worker)], 3, env=torchrun_env(TORCHSLIM_PROGRESS="off"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # Parsed from the whole output, not per line: torchrun's ranks share one pipe.
    reports = sorted(re.findall(r"rank (\d+) of (\d+): equal=(True|False)", proc.stdout))
    assert reports == [(str(r), "3", "True") for r in range(3)], proc.stdout[-2000:]
