"""Int4 embedding rows (``Int8Dynamic(embeddings="int4")``): accuracy, storage, reload, config, compile, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.config import config_from_dict
from torchslim.core.modspec import module_from_spec, module_spec
from torchslim.errors import ConfigError
from torchslim.measure.size import artifact_bytes
from torchslim.quantization import Int4Embedding, Int8Dynamic, Int8Embedding
from torchslim.quantization.common.sqnr import sqnr
from torchslim.quantization.int4.embedding import quantize_rows_int4
from torchslim.structured.factorized_embedding import FactorizedEmbedding, FactorizeEmbedding

torch.set_num_threads(1)


def net(vocab: int = 300, dim: int = 128) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(vocab, dim, padding_idx=1), nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, 8), nn.LayerNorm(8)
    ).eval()


def ids(vocab: int = 300, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 7), generator=torch.Generator().manual_seed(seed))


def gaussian_table(v: int = 200, d: int = 256) -> nn.Embedding:
    emb = nn.Embedding(v, d)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(v, d, generator=torch.Generator().manual_seed(0)))
    return emb


@pytest.mark.parametrize("group_size", [32, 128])
def test_rows_are_within_half_a_step_and_sqnr_meets_the_4bit_bound(group_size):
    emb = gaussian_table()
    q = Int4Embedding.from_float(emb, group_size=group_size)
    w, wq = emb.weight.detach(), q.dequantized_weight()
    # Round to nearest: every value is within half a step (plus float16 rounding of the minimum).
    step = q.scale.float().repeat_interleave(group_size, dim=1)
    slack = 1e-3 * w.abs().max()
    assert bool(((w - wq).abs() <= step / 2 + slack).all())
    # So the SQNR is at least 10·log10(Σ w² / Σ (Δ/2)²), with Δ = range / 15 per group.
    bound = 10 * math.log10(float((w.double() ** 2).sum() / ((step.double() / 2) ** 2).sum()))
    got = sqnr(w, wq)
    assert got >= bound - 0.1 and got > 15  # Gaussian rows: about 20 dB at g = 128, higher at g = 32
    all_ids = torch.arange(200).reshape(4, 50)
    assert torch.equal(q(all_ids), wq[all_ids])  # the lookup is the dequantized table's rows


def test_packed_buffer_has_half_the_bytes_of_int8_rows_and_scales_are_per_group():
    emb = gaussian_table(100, 256)
    q4, q8 = Int4Embedding.from_float(emb, group_size=128), Int8Embedding.from_float(emb)
    assert q4.weight.dtype == torch.uint8 and tuple(q4.weight.shape) == (100, 128)
    assert q4.weight.nbytes * 2 == q8.weight.nbytes
    assert q4.scale.dtype == q4.minimum.dtype == torch.float16 and tuple(q4.scale.shape) == (100, 2)
    # Codes use the full 4-bit range (min-max RTN): both nibbles reach 0 and 15.
    hi, lo = q4.weight >> 4, q4.weight & 0x0F
    assert {int(hi.min()), int(lo.min()), int(hi.max()), int(lo.max())} == {0, 15}


def test_packing_order_and_constant_groups():
    packed, scale, minimum = quantize_rows_int4(torch.tensor([[0.0, 1.5, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]), 2)
    assert packed.tolist()[0] == [0x0F, 0xF0]  # column 2i in the high nibble
    assert scale[1].tolist() == [0.0, 0.0] and minimum[1].tolist() == [2.0, 2.0]  # constant rows are exact


def test_padding_idx_is_kept_and_a_zero_padding_row_stays_exactly_zero():
    emb = nn.Embedding(20, 64, padding_idx=3)
    q = Int4Embedding.from_float(emb, group_size=32)
    assert q.padding_idx == 3 and module_spec(q)["padding_idx"] == 3
    out = q(torch.tensor([[3, 5, 3]]))
    assert torch.equal(out[0, 0], torch.zeros(64)) and torch.equal(out[0, 2], torch.zeros(64))
    assert module_from_spec(module_spec(q)).padding_idx == 3


def test_compress_save_load_is_bit_identical_and_artifact_shrinks(tmp_path):
    m, x = net(), ids()
    ref = m(x)
    before = artifact_bytes(m)
    ctx = ts.Context()
    ts.compress_(m, Int8Dynamic(embeddings="int4"), ctx=ctx)
    assert isinstance(m[0], Int4Embedding) and m[0].group_size == 128
    assert any("int4 embeddings: quantized 1 module" in e for e in ctx.events)
    y = m(x)
    assert sqnr(ref, y) > 12
    # ~V·D/2 bytes of codes plus 4 bytes per group, instead of V·D·4.
    table_bytes = 300 * 128 // 2 + 300 * 1 * 4
    assert artifact_bytes(m) < before - 300 * 128 * 4 + table_bytes + 20_000
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", factory=net)
    assert isinstance(back[0], Int4Embedding)
    for k, v in m.state_dict().items():
        assert back.state_dict()[k].dtype == v.dtype and torch.equal(back.state_dict()[k], v), k
    assert torch.equal(back(x), y)


def test_int8_stays_the_default_and_true_means_int8():
    for cfg in (Int8Dynamic(), Int8Dynamic(embeddings=True), Int8Dynamic(embeddings="int8")):
        m = net()
        ts.compress_(m, cfg)
        assert type(m[0]) is Int8Embedding
    m = net()
    ts.compress_(m, Int8Dynamic(embeddings=False))
    assert type(m[0]) is nn.Embedding


def test_factorized_table_becomes_int4_rows():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(1000, 256), nn.Linear(256, 4)).eval()
    ts.compress_(m, FactorizeEmbedding(rank=64))
    x = ids(1000)
    ref = m(x)
    ts.compress_(m, Int8Dynamic(embeddings="int4", embedding_group_size=32))
    assert isinstance(m[0], FactorizedEmbedding) and isinstance(m[0].table, Int4Embedding)
    assert m[0].table.group_size == 32 and tuple(m[0].table.weight.shape) == (1000, 32)
    assert sqnr(ref, m(x)) > 12


def test_config_validation_messages():
    for bad in ({"embeddings": "int2"}, {"embeddings": 4}, {"embedding_group_size": 0}):
        with pytest.raises(ConfigError, match="embedding"):
            Int8Dynamic(**bad)
    with pytest.raises(ConfigError, match="positive even"):
        Int8Dynamic(embeddings="int4", embedding_group_size=33)
    with pytest.raises(ConfigError, match="embedding_group_size"):
        config_from_dict({"kind": "int8-dynamic", "embedding_group_size": True})
    with pytest.raises(ConfigError, match="not a multiple of group_size"):
        Int4Embedding.from_float(nn.Embedding(10, 96), group_size=64)
    # A table the group size does not divide is refused before anything is swapped.
    m = net(dim=96)
    with pytest.raises(ConfigError, match=r"embedding_dim 96 is not a multiple of group_size 128 \(table 0\)"):
        ts.compress_(m, Int8Dynamic(embeddings="int4"))
    assert type(m[0]) is nn.Embedding and type(m[1]) is nn.Linear
    ts.compress_(m, Int8Dynamic(embeddings="int4", embedding_group_size=32))
    assert isinstance(m[0], Int4Embedding)


def test_recipe_yaml_parses_int4_embeddings():
    import yaml

    text = "steps:\n  - kind: int8-dynamic\n    embeddings: int4\n    embedding_group_size: 64\n"
    recipe = ts.recipe_from_dict(yaml.safe_load(text))
    cfg = recipe.steps[0].config
    assert cfg == Int8Dynamic(embeddings="int4", embedding_group_size=64)
    assert ts.recipe_from_dict(recipe.to_dict()).steps[0].config == cfg
    old = ts.recipe_from_dict(yaml.safe_load("steps:\n  - kind: int8-dynamic\n    embeddings: true\n"))
    assert old.steps[0].config.embeddings is True and old.steps[0].config.embedding_group_size == 128


def test_bf16_compute_dtype_hands_on_bf16_and_reloads(tmp_path):
    m, x = net(), ids()
    ref = m(x)
    ts.compress_(m, Int8Dynamic(embeddings="int4", compute_dtype="bfloat16"))
    assert isinstance(m[0], Int4Embedding) and m[0].output_dtype == torch.bfloat16
    assert m[0].scale.dtype == torch.float16  # the compressed table keeps its own storage
    seen = []
    m[1].register_forward_hook(lambda mod, args, out: seen.append(args[0].dtype))
    y = m(x)
    assert seen == [torch.bfloat16] and y.dtype == torch.float32 and sqnr(ref, y) > 12
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", factory=net)
    assert back[0].output_dtype == torch.bfloat16 and torch.equal(back(x), y)


def test_compiled_model_equals_eager():
    eager, compiled, x = net(), net(), ids()
    ts.compress_(eager, Int8Dynamic(embeddings="int4", embedding_group_size=32))
    torch._dynamo.reset()
    ts.compress_(compiled, Int8Dynamic(embeddings="int4", embedding_group_size=32, compile=True))
    assert isinstance(compiled[0], Int4Embedding)
    assert torch.allclose(compiled(x), eager(x), atol=1e-4, rtol=1e-4)
    # The table lookup alone, compiled: the unpack traces and gives the same rows.
    table = torch.compile(eager[0], backend="aot_eager", dynamic=True)
    assert torch.equal(table(x), eager[0](x))


def test_onnx_export_keeps_packed_rows(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from torchslim.export import export_onnx

    m, x = net(), ids()
    ts.compress_(m, Int8Dynamic(embeddings="int4", embedding_group_size=64))
    assert export_onnx(m, x, tmp_path / "m.onnx") < 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    inits = {i.name: (i.data_type, list(i.dims)) for i in graph.initializer}
    assert inits["0.weight"] == (onnx.TensorProto.UINT8, [300, 64])  # 4-bit codes stay packed in the file
    assert inits["0.scale"] == (onnx.TensorProto.FLOAT16, [300, 2])
