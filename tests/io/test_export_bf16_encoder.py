"""ONNX / .pt2 export of a user TransformerEncoder classifier under Int8Dynamic(compute_dtype="bfloat16").

Before the fix ONNX Runtime refused the graph (LayerNormalization bound to bf16 activations and float32
weights: the int8 embedding handed on bf16), and a model compiled in place was traced through
``torch.compile``.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.export import export_onnx, export_pt2


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(ids)).mean(1))


IDS = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1))


def bf16_int8(compiled: bool) -> nn.Module:
    m = Classifier().eval()
    ts.compress_(
        m, ts.Int8Dynamic(compute_dtype="bfloat16"), ctx=ts.Context(example_inputs=(IDS,), calibration=[(IDS,)])
    )
    assert m.emb.output_dtype == torch.bfloat16  # the case ONNX Runtime refused
    if compiled:
        m.compile()  # what compile=True does (in place); export must trace the plain module
    return m


def test_bf16_int8_compiled_transformer_exports_to_onnx_runtime_at_batch_1_and_7(tmp_path) -> None:
    m = bf16_int8(compiled=True)
    export_onnx(m, (IDS,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 7):
        ids = torch.randint(0, 50, (batch, 5), generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {name: ids.numpy()})
        with torch.no_grad():
            ref = m.forward(ids).float()  # forward: the eager model, not the compiled call
        assert got.shape == (batch, 3)
        assert torch.allclose(torch.from_numpy(got), ref, atol=0.05 * float(ref.abs().max()) + 1e-3)
    assert m._compiled_call_impl is not None  # the model itself is not changed
    assert m.emb.output_dtype == torch.bfloat16


def test_bf16_int8_transformer_exports_to_pt2(tmp_path) -> None:
    m = bf16_int8(compiled=True)
    export_pt2(m, (IDS,), tmp_path / "m.pt2")
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    for batch in (1, 7):
        ids = torch.randint(0, 50, (batch, 5), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert torch.equal(loaded(ids), m.forward(ids))


class _Difference(nn.Module):
    """Two nearly equal layers subtracted: a small output that bf16 rounding changes by far more than 5%."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight + 1e-3)
            self.b.bias.copy_(self.a.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) - self.b(x)


def test_onnx_of_bf16_model_is_checked_against_what_it_computes(tmp_path: Path) -> None:
    model = _Difference().eval()
    ts.compress_(model, ts.CastDtype("bfloat16"))
    x = torch.randn(4, 16)
    with torch.no_grad():
        bf16_out, fp32_out = model(x).float(), _Difference()(x)
    assert float((bf16_out - fp32_out).norm() / fp32_out.norm()) > 0.05  # bf16 itself is off by more than 5%
    err = export_onnx(model, (x,), tmp_path / "m.onnx")  # was: exit 5 "differs from the model"
    assert err < 1e-4
