"""Every technique, and the full combination (pruned + distilled + quantized), round-trips through
``ts.save`` / ``ts.load`` with bit-identical outputs, reloaded in a fresh Python process.

The models are the digits teacher (trained once and cached) and a small residual MLP; each technique is
applied on its own, then one recipe chains channel pruning, distillation and static int8.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.recipes import recipe_from_dict, run_recipe
from torchslim.workloads import get_workload

REPO = Path(__file__).resolve().parents[2]
X_MLP = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))


class Mlp(nn.Module):
    """Residual blocks in a ModuleList (for layer dropping) plus an embedding (int8 embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 32)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)) for _ in range(4))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.embed.weight[:1]
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def build_mlp() -> nn.Module:
    torch.manual_seed(0)
    return Mlp().eval()


def build_digits() -> nn.Module:
    from torchslim.workloads.digits import build_teacher

    return build_teacher().eval()


def _mlp_cases() -> dict[str, tuple[object, ...]]:
    ctx = ts.Context(example_inputs=(X_MLP,), calibration=[(X_MLP,)])
    return {
        "magnitude-60": (ts.MagnitudePruning(sparsity=0.6), ctx),
        "wanda-50": (ts.WandaPruning(sparsity=0.5), ctx),
        "2of4": (ts.NMPruning(n=2, m=4), ctx),
        "low-rank": (ts.LowRank(rank_ratio=0.25), ctx),
        "layer-drop": (ts.LayerDropping(every_k=2), ctx),
        "channels": (ts.ChannelPruning(ratio=0.5), ctx),
        "int8-dynamic": (ts.Int8Dynamic(), ctx),
        "int8-weight-only": (ts.Int8WeightOnly(), ctx),
        "bf16": (ts.CastDtype("bfloat16"), ctx),
    }


@pytest.fixture(scope="module")
def digits():
    wl = get_workload("digits")
    return wl, wl.context()


def test_every_technique_reloads_bit_identical_in_a_fresh_process(tmp_path, digits) -> None:
    wl, dctx = digits
    saved: list[tuple[str, str, str]] = []  # (artifact dir, factory, input name)

    def keep(name: str, model: nn.Module, factory: str, x: torch.Tensor) -> None:
        with torch.inference_mode():
            ref = model(x)
        ts.save(model, tmp_path / name)
        torch.save({"x": x, "ref": ref}, tmp_path / f"{name}.pt")
        saved.append((name, factory))

    for name, (config, ctx) in _mlp_cases().items():
        keep(name, ts.compress_(build_mlp(), config, ctx=ctx), "build_mlp", X_MLP)

    x = dctx.example_inputs[0][:8]
    teacher = wl.model()
    for name, config in {
        "fold-bn": ts.FoldBatchNorm(),
        "int8-static": ts.Int8Static(),
        "channels-l2": ts.ChannelPruning(ratio=0.5, round_to=8),
        "gradual-like-80": ts.MagnitudePruning(sparsity=0.8, scope="global"),
    }.items():
        keep(name, ts.compress_(copy.deepcopy(teacher), config, ctx=dctx), "build_digits", x)

    # The whole story in one artifact: channels removed, distilled from the original, static int8.
    recipe = recipe_from_dict(
        {
            "steps": [
                {"kind": "channel-pruning", "ratio": 0.5, "round_to": 32},
                {"kind": "distill", "epochs": 1},
                {"kind": "int8-static"},
            ]
        }
    )
    combined, _ = run_recipe(copy.deepcopy(teacher), recipe, dctx, measure_steps=False)
    keep("pruned-distilled-int8", combined, "build_digits", x)

    script = textwrap.dedent(
        f"""
        import sys, torch
        torch.set_num_threads({torch.get_num_threads()})  # the references' thread count: sums split alike
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torchslim as ts
        import test_every_technique as t
        bad = []
        for name, factory in {saved!r}:
            m = ts.load({str(tmp_path)!r} + "/" + name, factory=getattr(t, factory))
            data = torch.load({str(tmp_path)!r} + "/" + name + ".pt", weights_only=True)
            with torch.inference_mode():
                if not torch.equal(m(data["x"]), data["ref"]):
                    bad.append(name)
        print("NOT IDENTICAL:", bad)
        sys.exit(1 if bad else 0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(saved) == 14
