"""Quantized models export to ONNX with their int8 weights kept int8 and run in ONNX Runtime."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import torchslim as ts
from torchslim.export import export_onnx, export_pt2

DATA = (Path(__file__).resolve().parents[2] / "../shared/data/stsbenchmark").resolve()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()


def _graph(path: Path) -> tuple[set[str], dict[str, str]]:
    g = onnx.load(str(path))
    dtypes = {i.name: f"{numpy_helper.to_array(i).dtype}/{numpy_helper.to_array(i).ndim}d" for i in g.graph.initializer}
    return {n.op_type for n in g.graph.node}, dtypes


# The export is also checked at batch 1, where eager weight-only runs its bf16 kernel (<= 16 rows):
# the fp32 graph then differs by bf16 rounding. Dynamic int8 is the same arithmetic at every batch.
@pytest.mark.parametrize(
    ("config", "op", "tol"),
    [(ts.Int8Dynamic(), "MatMulInteger", 1e-5), (ts.Int8WeightOnly(), "DequantizeLinear", 5e-3)],
)
def test_int8_linear_lowered_with_int8_initializers(tmp_path, config, op, tol) -> None:
    x = (torch.randn(40, 64, generator=torch.Generator().manual_seed(1)),)
    q = ts.compress_(_mlp(), config)
    assert export_onnx(q, x, tmp_path / "q.onnx") < tol
    ops, dtypes = _graph(tmp_path / "q.onnx")
    assert op in ops and "Gemm" not in ops
    assert sorted(d for d in dtypes.values() if d.endswith("2d")) == ["int8/2d", "int8/2d"]  # no float weight matrix
    assert export_pt2(q, x, tmp_path / "q.pt2") < tol


def test_static_int8_cnn_exports_int8_weights(tmp_path) -> None:
    from torchslim.workloads import get_workload

    wl = get_workload("digits")
    ctx = wl.context()
    q = ts.compress_(copy.deepcopy(wl.model()), ts.Int8Static(), ctx=ctx)
    x = (ctx.example_inputs[0][:16],)
    # Exported: the reference path (fake-quantized activations), vs oneDNN's requantized uint8 in eager.
    assert export_onnx(q, x, tmp_path / "s.onnx") < 0.05
    ops, dtypes = _graph(tmp_path / "s.onnx")
    assert "DequantizeLinear" in ops and all(dtypes[n].startswith("int8") for n in dtypes if n.endswith(".weight"))


@pytest.mark.skipif(not (DATA / "sts-test.csv").is_file(), reason=f"STS benchmark data not found at {DATA}")
def test_minilm_int8_onnx_matches_torchslim_int8(tmp_path) -> None:
    from torchslim.workloads import get_workload

    wl = get_workload("minilm-stsb", data=str(DATA))
    ctx = wl.context()
    q = ts.compress_(wl.model(), ts.Int8Dynamic(), ctx=ctx)
    x = tuple(t[:4, :32] for t in ctx.example_inputs)
    export_onnx(q, x, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").stat().st_size < 30e6  # int8 weights: about a quarter of the fp32 90 MB
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(
        session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), x, strict=True)})[0]
    )
    with torch.inference_mode():
        ref = q(*x)
    cos = torch.nn.functional.cosine_similarity(got.float(), ref.float(), dim=-1)
    assert cos.min() >= 0.99
    assert "MatMulInteger" in _graph(tmp_path / "m.onnx")[0]
