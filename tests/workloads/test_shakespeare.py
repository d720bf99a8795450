"""shakespeare-gpt: the data split, the model shape, training + caching on a tiny config, and the benchmark wiring."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from torchslim.errors import UsageError
from torchslim.workloads import get_workload, workload_names
from torchslim.workloads.shakespeare import CharGPT, GPTArch, GPTTrain, ShakespeareWorkload, load_text

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"tiny Shakespeare not found at {DATA}")

TINY_ARCH = GPTArch(n_layer=1, d_model=128, n_head=2, block_size=32)
TINY_TRAIN = GPTTrain(steps=40, batch=8, lr=5e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny(eval_tokens: int = 4000) -> ShakespeareWorkload:
    return ShakespeareWorkload(DATA, arch=TINY_ARCH, train=TINY_TRAIN, eval_tokens=eval_tokens)


def test_registered_and_lower_is_better():
    assert "shakespeare-gpt" in workload_names()
    assert ShakespeareWorkload.higher_is_better is False
    assert ShakespeareWorkload.metric == "val_ppl"


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--data"):
        get_workload("shakespeare-gpt", tmp_path / "nope.txt")


def test_default_model_is_a_few_million_params_and_int4_g128_friendly():
    m = CharGPT(65)
    assert 2_000_000 < sum(p.numel() for p in m.parameters()) < 10_000_000
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(linears) == 4 * GPTArch().n_layer + 1
    assert all(x.in_features % 128 == 0 and x.out_features % 16 == 0 for x in linears)


@needs_data
def test_split_is_a_fixed_tail_and_calibration_comes_from_training_part():
    text = load_text(DATA)
    assert len(text.chars) == 65 and len(text.ids) == 1115394
    assert text.split == int(0.9 * len(text.ids))
    wl = tiny()
    w = wl.val_windows()
    assert w.shape == (4000 // 32, 33)
    assert torch.equal(w[0], text.ids[text.split : text.split + 33])
    assert torch.equal(w[1, 0], w[0, -1])  # consecutive, non-overlapping targets
    cal, cal2 = wl.calibration(3), wl.calibration(3)
    assert len(cal) == 3 and cal[0][0].shape == (8, 32)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cal, cal2, strict=True))
    # Every calibration window is a substring of the training part, never of the tail.
    train = "".join(text.chars[i] for i in text.train.tolist())
    assert "".join(text.chars[i] for i in cal[0][0][0].tolist()) in train


@needs_data
def test_tiny_training_beats_uniform_and_is_cached(cache):
    wl = tiny()
    untrained = wl.evaluate(wl.factory())["val_ppl"]
    model = wl.model()
    ppl = wl.evaluate(model)["val_ppl"]
    assert math.isfinite(ppl)
    assert ppl < 0.6 * len(wl.text.chars) < untrained  # far below a uniform guess over the 65 characters
    assert wl.cache_path().is_file() and wl.cache_path().is_relative_to(cache)
    # A new instance loads the cached weights (no retraining): identical state, identical score.
    again = tiny()
    reloaded = again.model()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )
    assert again.evaluate(reloaded)["val_ppl"] == ppl
    assert wl.evaluate(model, "test") == wl.evaluate(model, "val")
    with pytest.raises(ValueError, match="held-out tail"):
        wl.evaluate(model, "train")


@needs_data
def test_benchmark_rows_on_a_tiny_model(cache):
    pytest.importorskip("torchslim.quantization.int4.mixed")
    from torchslim.bench import BENCHMARKS
    from torchslim.bench.shakespeare import TABLE, run_on

    assert "shakespeare-gpt" in BENCHMARKS
    res = TABLE.check(run_on(tiny(eval_tokens=2000), quick=True))
    names = [r["variant"] for r in res.rows]
    assert names[0] == "fp32" and "torchslim-int4-mixed" in names
    assert {f"torchslim-int4-{m}-g{g}" for m in ("rtn", "gptq", "awq", "hqq") for g in (128, 32)} <= set(names)
    fp32 = res.rows[0]
    for r in res.rows[1:]:
        assert math.isfinite(r["quality"]["val_ppl"])
        assert r["size_mb"] < 0.5 * fp32["size_mb"]
        assert r["ppl_vs_fp32"] == pytest.approx(r["quality"]["val_ppl"] / fp32["quality"]["val_ppl"], rel=1e-3)
