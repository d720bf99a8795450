"""shakespeare-gpt's W4A8 row (issue #23): GPTQ g128 with int8 activations, next to its W4A16 twin.

The row's config is checked against the table; a tiny untrained :class:`CharGPT` (no data, no training)
shows that the config swaps every Linear into :class:`Int4W4A8Linear` and that its logits stay close to
the int4 weight-only (bf16 activations) row's. With the tiny Shakespeare file present, a bench run on a
tiny workload shows the row scored and, where the kernel is the torch reference, left out with a note.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench import shakespeare
from torchslim.core.context import Context
from torchslim.workloads.shakespeare import CharGPT, GPTArch, GPTTrain, ShakespeareWorkload

pytest.importorskip("torchslim.quantization.int4.w4a8")
from torchslim.quantization import Int4WeightOnly  # noqa: E402
from torchslim.quantization.int4.modules import Int4WeightOnlyLinear  # noqa: E402
from torchslim.quantization.int4.w4a8 import Int4W4A8Linear  # noqa: E402

ROW, TWIN = shakespeare.W4A8_ROW, "torchslim-int4-gptq-g128"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
ARCH = GPTArch(n_layer=2, d_model=128, n_head=2, block_size=32)
VOCAB = 65


pytestmark = pytest.mark.usefixtures("one_thread")


def _quiet(config: Int4WeightOnly) -> Int4WeightOnly:
    return dataclasses.replace(config, progress=False)


def test_w4a8_row_sits_after_its_twin_and_is_gptq_g128_with_int8_activations():
    rows = shakespeare.TABLE.rows
    assert rows[rows.index(TWIN) + 1] == ROW == "torchslim-int4-w4a8-gptq-g128"
    assert ROW in shakespeare.TABLE.optional
    assert shakespeare.TABLE.recipes[ROW] == "int4-w4a8-g128"
    configs = shakespeare._int4_configs()
    assert list(configs) == list(rows[1:])  # built in table order, so TABLE.check accepts the result
    w4a8, twin = configs[ROW], configs[TWIN]
    assert isinstance(w4a8, Int4WeightOnly)
    assert (w4a8.method, w4a8.group_size, w4a8.activations) == ("gptq", 128, "int8")
    assert twin.activations == "bf16"
    assert dataclasses.replace(twin, activations="int8") == w4a8  # the twin but for the activations


def test_w4a8_config_swaps_every_linear_and_stays_close_to_int4_weight_only():
    torch.manual_seed(0)
    fp32 = CharGPT(VOCAB, ARCH).eval()
    gen = torch.Generator().manual_seed(1)
    calibration = [(torch.randint(0, VOCAB, (8, ARCH.block_size), generator=gen),) for _ in range(4)]
    x = torch.randint(0, VOCAB, (4, ARCH.block_size), generator=gen)
    configs = shakespeare._int4_configs()
    n_linear = sum(isinstance(m, nn.Linear) for m in fp32.modules())
    assert n_linear == 4 * ARCH.n_layer + 1

    def quantize(name: str) -> nn.Module:
        return compress_(copy.deepcopy(fp32), _quiet(configs[name]), ctx=Context(calibration=calibration)).eval()

    w4a8, twin = quantize(ROW), quantize(TWIN)
    assert not any(isinstance(m, nn.Linear) for m in w4a8.modules())
    assert sum(isinstance(m, Int4W4A8Linear) for m in w4a8.modules()) == n_linear
    assert sum(isinstance(m, Int4WeightOnlyLinear) for m in twin.modules()) == n_linear
    assert all(m.group_size == 128 for m in w4a8.modules() if isinstance(m, Int4W4A8Linear))
    with torch.inference_mode():
        ref, y8, y16 = fp32(x), w4a8(x), twin(x)
    assert y8.shape == y16.shape == (4, ARCH.block_size, VOCAB) and torch.isfinite(y8).all()
    # Per-token symmetric int8 rounds each input by at most max|x|/254; uniform rounding noise is
    # max|x|/(127·√12) per entry, about crest/440 of the token's RMS: ~1% for a crest factor of 4, per
    # Linear. Over the 2 blocks' 4 Linears each plus the head, a few % at most; 0.05 leaves room.
    rel = ((y8 - y16).norm() / y16.norm()).item()
    assert 0.0 < rel < 0.05  # nonzero: the activations really are quantized to int8
    # Both int4 rows are the same distance from fp32, give or take the int8 activation error.
    err8, err16 = ((y8 - ref).norm() / ref.norm()).item(), ((y16 - ref).norm() / ref.norm()).item()
    assert err8 < err16 + 0.05


needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"tiny Shakespeare not found at {DATA}")


def _tiny_run(monkeypatch, tmp_path):
    """run_on a tiny trained workload with only the W4A8 row and its twin (the other rows have their own tests)."""
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path / "cache"))
    every = shakespeare._int4_configs()
    monkeypatch.setattr(shakespeare, "_int4_configs", lambda: {n: _quiet(every[n]) for n in (TWIN, ROW)})
    wl = ShakespeareWorkload(DATA, arch=ARCH, train=GPTTrain(steps=40, batch=8, lr=5e-3), eval_tokens=2000)
    return shakespeare.TABLE.check(shakespeare.run_on(wl, quick=True))


@needs_data
def test_bench_scores_the_w4a8_row_next_to_its_twin(monkeypatch, tmp_path):
    from torchslim import kernels

    if kernels.load() == "torch-reference":
        pytest.skip("the W4A8 kernel is not built here (the row is left out)")
    res = _tiny_run(monkeypatch, tmp_path)
    names = [r["variant"] for r in res.rows]
    assert names == ["fp32", TWIN, ROW]
    fp32, twin, w4a8 = res.rows
    assert math.isfinite(w4a8["quality"]["val_ppl"])
    assert w4a8["size_mb"] < 0.5 * fp32["size_mb"]
    assert w4a8["quality"]["val_ppl"] == pytest.approx(twin["quality"]["val_ppl"], rel=0.05)
    assert w4a8["ppl_vs_fp32"] == pytest.approx(w4a8["quality"]["val_ppl"] / fp32["quality"]["val_ppl"], rel=1e-3)
    assert any(n.startswith(f"{ROW}: ") and "w4a8" in n for n in res.notes)  # the transform's own record


@needs_data
def test_bench_leaves_the_w4a8_row_out_with_a_note_without_the_kernel(monkeypatch, tmp_path):
    from torchslim import kernels

    monkeypatch.setattr(kernels, "load", lambda: "torch-reference")
    res = _tiny_run(monkeypatch, tmp_path)
    assert [r["variant"] for r in res.rows] == ["fp32", TWIN]
    assert any(n.startswith(f"{ROW} left out: ") and "torch reference" in n for n in res.notes)
