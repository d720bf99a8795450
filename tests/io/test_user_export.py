"""Exports run in their runtime at any batch size: CNN, int8, int4 and keyword-input (Hugging Face) models.

Each exported file is run here by the runtime a user would run it with (ONNX Runtime, or
``torch.export.load``) at batch 1 and batch 7, not only at the example's batch size.
"""

from __future__ import annotations

import logging

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper
from tiny_hf import tiny_bert

import torchslim as ts
from torchslim.errors import UnsupportedModelError
from torchslim.export import export_onnx, export_pt2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).eval()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()


def _ort(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ort_run(session: ort.InferenceSession, *tensors: torch.Tensor) -> torch.Tensor:
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), tensors, strict=True)}
    return torch.from_numpy(session.run(None, feeds)[0])


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


@pytest.mark.parametrize(
    ("build", "shape", "max_rel"),
    [
        (_cnn, (1, 8, 8), 1e-5),
        (lambda: ts.compress_(_mlp(), ts.Int8Dynamic()), (64,), 1e-5),
        (lambda: ts.compress_(_mlp(), ts.Int8WeightOnly()), (64,), 1e-2),  # eager: bf16 kernel at <= 16 rows
    ],
    ids=["cnn", "int8-dynamic", "int8-weight-only"],
)
def test_exports_run_at_batch_1_and_7(tmp_path, build, shape, max_rel) -> None:
    model = build()
    example = torch.randn(8, *shape, generator=_gen(1))
    export_onnx(model, (example,), tmp_path / "m.onnx")
    export_pt2(model, (example,), tmp_path / "m.pt2")
    session, program = _ort(tmp_path / "m.onnx"), torch.export.load(str(tmp_path / "m.pt2")).module()
    for batch in (1, 7):
        x = torch.randn(batch, *shape, generator=_gen(batch))
        with torch.inference_mode():
            ref = model(x)
            assert _rel(_ort_run(session, x), ref) < max_rel
            assert _rel(program(x), ref) < max_rel


def _int4() -> nn.Module:
    return ts.compress_(_mlp(), ts.Int4WeightOnly(group_size=32))


def test_int4_onnx_runs_in_onnx_runtime_with_4bit_weights(tmp_path) -> None:
    torch.manual_seed(0)
    q = ts.compress_(nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 64)).eval(), ts.Int4WeightOnly())
    err = export_onnx(q, (torch.randn(8, 3, 512, generator=_gen(1)),), tmp_path / "q.onnx")  # [batch, tokens, K]
    assert 0 < err < 0.05  # fp32 activations in ONNX Runtime, bf16 in torch's int4 kernel
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    assert [n.op_type for n in graph.node].count("MatMulNBits") == 2
    weights = [numpy_helper.to_array(i) for i in graph.initializer]
    n_weights = 512 * 512 + 512 * 64
    assert sum(w.nbytes for w in weights if w.dtype == "uint8") == n_weights // 2  # two 4-bit codes a byte
    assert max(w.size for w in weights if w.dtype != "uint8") < 512 * 512 // 64  # no float weight matrix
    assert (tmp_path / "q.onnx").stat().st_size < n_weights * 4 / 6  # 6x smaller than the fp32 weights
    session = _ort(tmp_path / "q.onnx")
    for batch in (1, 7):
        x = torch.randn(batch, 3, 512, generator=_gen(batch))
        with torch.inference_mode():
            assert _rel(_ort_run(session, x), q(x)) < 0.02


def test_int4_pt2_traces_the_kernel_without_falling_back(tmp_path, caplog) -> None:
    q = _int4()
    with caplog.at_level(logging.WARNING):
        assert export_pt2(q, (torch.randn(8, 64, generator=_gen(1)),), tmp_path / "q.pt2") == 0.0
        assert export_onnx(q, (torch.randn(8, 64, generator=_gen(1)),), tmp_path / "q.onnx") < 0.05
    assert "int4 kernel failed" not in caplog.text
    assert all(m.kernel for m in q if hasattr(m, "kernel"))  # the export did not turn the model's kernel off
    assert type(q[0]).__name__ == "Int4WeightOnlyLinear"  # the export-only stand-ins are gone again
    program = torch.export.load(str(tmp_path / "q.pt2"))
    assert "_weight_int4pack_mm" in str(program.graph)
    for batch in (1, 7):
        x = torch.randn(batch, 64, generator=_gen(batch))
        with torch.inference_mode():
            assert torch.equal(program.module()(x), q(x))


def _tiny_bert() -> nn.Module:
    return tiny_bert(hidden=32, layers=1, heads=2, ffn=64, vocab=100, max_len=32)


def _tokens(batch: int, seq: int) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2 :] = 0  # one padded row
    return {"input_ids": torch.randint(0, 100, (batch, seq), generator=_gen(batch * seq)), "attention_mask": mask}


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_hugging_face_keyword_inputs_export_with_dynamic_batch_and_sequence(tmp_path, fmt) -> None:
    bert = _tiny_bert()
    path = tmp_path / f"bert.{fmt}"
    err = (export_onnx if fmt == "onnx" else export_pt2)(bert, _tokens(2, 9), path)
    assert err < 1e-4
    for batch, seq in ((1, 5), (7, 12)):
        inputs = _tokens(batch, seq)
        with torch.inference_mode():
            ref = bert(**inputs).last_hidden_state
            if fmt == "onnx":
                session = _ort(path)
                assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
                got = _ort_run(session, inputs["input_ids"], inputs["attention_mask"])
            else:
                got = torch.export.load(str(path)).module()(**inputs).last_hidden_state
        assert got.shape == (batch, seq, 32) and _rel(got, ref) < 1e-5


def test_example_batch_1_still_exports_a_dynamic_batch(tmp_path) -> None:
    export_onnx(_cnn(), (torch.randn(1, 1, 8, 8, generator=_gen(1)),), tmp_path / "m.onnx")
    assert _ort_run(_ort(tmp_path / "m.onnx"), torch.randn(7, 1, 8, 8)).shape == (7, 10)


class FixedBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(4, -1).sum(1)


def test_a_model_that_fixes_its_batch_exports_static_with_a_warning(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="torchslim.export"):
        assert export_pt2(FixedBatch(), (torch.ones(4, 3),), tmp_path / "f.pt2") == 0.0
    assert "fixes its batch size" in caplog.text
    assert export_onnx(FixedBatch(), (torch.ones(4, 3),), tmp_path / "f.onnx", dynamic=False) == 0.0


class ExportsDifferently(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3 if torch.compiler.is_exporting() else x * 2


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_program_that_differs_from_the_model_is_an_exit_5_error(tmp_path, fmt) -> None:
    with pytest.raises(UnsupportedModelError, match=r"at batch 8 differs from the model: relative error 0\.5") as e:
        (export_onnx if fmt == "onnx" else export_pt2)(ExportsDifferently(), (torch.ones(8, 3),), tmp_path / f"d.{fmt}")
    assert e.value.exit_code == 5 and "\n" not in str(e.value)


def test_int4_model_exported_directly_with_torch_export_traces_the_dequantize_path(caplog) -> None:
    q = _int4()
    batch = torch.export.Dim("batch")
    with caplog.at_level(logging.WARNING):
        program = torch.export.export(q, (torch.randn(8, 64),), dynamic_shapes=({0: batch},))
    assert "int4 kernel failed" not in caplog.text and all(m.kernel for m in q if hasattr(m, "kernel"))
    x = torch.randn(7, 64, generator=_gen(7))
    with torch.inference_mode():
        assert _rel(program.module()(x), q(x)) < 0.01  # fp32 dequantized weights vs the bf16 kernel


def test_hugging_face_causal_lm_exports_without_its_key_value_cache(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=32)).eval()
    assert gpt2.config.use_cache  # the default: forward returns a DynamicCache, which torch.export cannot output
    assert export_pt2(gpt2, {"input_ids": torch.randint(0, 100, (2, 9), generator=_gen(0))}, tmp_path / "g.pt2") == 0
    ids = torch.randint(0, 100, (7, 5), generator=_gen(1))
    with torch.inference_mode():
        got = torch.export.load(str(tmp_path / "g.pt2")).module()(input_ids=ids, use_cache=False).logits
        assert torch.allclose(got, gpt2(input_ids=ids).logits, atol=1e-5)
