"""One spec protocol for every swapped module: artifacts of each kind reload bit-identically, the stored
specs keep their JSON keys (the artifact format), and every registered kind round-trips through its spec."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.modspec import module_from_spec, module_spec, register_spec_module, spec_kinds
from torchslim.errors import UnsafeInputError

IDS = torch.arange(10).reshape(2, 5)
IMG = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
SEQ = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(2))
LINEARS = ts.Select(include=(r"^[13]$",))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(72, 4)
    ).eval()


def encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 8, 128, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def _heads(m: nn.Module) -> None:
    ts.compress_(m, ts.ChannelPruning(ratio=0.5, head_ratio=0.5), ctx=ts.Context(example_inputs=(SEQ,)))


# name -> (factory, input, compress in place); one per kind of swapped module ts.load rebuilds
CASES = {
    "int8-dynamic": (mlp, IDS, lambda m: ts.compress_(m, ts.Int8Dynamic())),
    "int8-dynamic-smooth": (
        mlp,
        IDS,
        lambda m: ts.compress_(m, ts.Int8Dynamic(smoothquant=0.5), ctx=ts.Context(calibration=[(IDS,)])),
    ),
    "int8-weight-only": (mlp, IDS, lambda m: ts.compress_(m, ts.Int8WeightOnly())),
    "int8-static": (cnn, IMG, lambda m: ts.compress_(m, ts.Int8Static(), ctx=ts.Context(calibration=[(IMG,)]))),
    "int4-rtn": (mlp, IDS, lambda m: ts.compress_(m, ts.Int4WeightOnly(group_size=32, method="rtn"), select=LINEARS)),
    "mixed-int4": (
        mlp,
        IDS,
        lambda m: ts.compress_(
            m,
            ts.MixedPrecision(budget_ratio=0.25, group_size=32),
            select=LINEARS,
            ctx=ts.Context(calibration=[(IDS,)]),
        ),
    ),
    "low-rank": (mlp, IDS, lambda m: ts.compress_(m, ts.LowRank(rank_ratio=0.25))),
    "low-rank-conv": (
        cnn,
        IMG,
        lambda m: ts.compress_(m, ts.LowRank(rank_ratio=0.5), select=ts.Select(include=("^0$",))),
    ),
    "pruned-heads": (encoder, SEQ, _heads),
    "pruned-heads-int8": (encoder, SEQ, lambda m: (_heads(m), ts.compress_(m, ts.Int8Dynamic()))),
}

# The JSON keys each stored module spec has had since the format was introduced (optional ones apart).
SPEC_KEYS = {
    "Int8DynamicLinear": ({"class", "in_features", "out_features", "bias", "smooth"}, {"outliers"}),
    "Int8WeightOnlyLinear": ({"class", "in_features", "out_features", "bias"}, set()),
    "Int8Embedding": ({"class", "num_embeddings", "embedding_dim", "padding_idx"}, {"output_dtype"}),
    "Int8StaticConv2d": (
        {"class", "in_channels", "out_channels", "groups", "relu", "output_uint8"}
        | {"kernel_size", "stride", "padding", "dilation"},
        {"output_dtype", "activation"},
    ),
    "Int8StaticLinear": ({"class", "in_features", "out_features", "relu"}, {"output_dtype", "activation"}),
    "Int8MaxPool2d": (
        {"class", "kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"},
        {"dequantize"},
    ),
    "Int4WeightOnlyLinear": (
        {"class", "in_features", "out_features", "bias", "group_size", "input_scale", "kernel"},
        set(),
    ),
}


def _stored_specs(ops: list[dict]) -> list[dict]:
    return [spec for op in ops if op["op"] == "int8-modules" for _, spec in op["data"]["modules"]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_swapped_kind_reloads_bit_identically_with_the_stored_format(tmp_path, name) -> None:
    factory, x, compress = CASES[name]
    model = factory()
    compress(model)
    with torch.no_grad():
        before = model(x)
    ts.save(model, tmp_path / "art")
    again = ts.load(tmp_path / "art", factory=factory)
    with torch.no_grad():
        assert torch.equal(again(x), before)
    assert [type(m) for m in again.modules()] == [type(m) for m in model.modules()]

    ops = json.loads((tmp_path / "art" / "structure.json").read_text())["ops"]
    for spec in _stored_specs(ops):
        required, optional = SPEC_KEYS[spec["class"]]
        assert required <= set(spec) <= required | optional, spec
    by_op = {op["op"]: op["data"] for op in ops}
    if "low-rank" in by_op:  # path -> rank, as ever
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in by_op["low-rank"]["layers"].items())
    if name.startswith("pruned-heads"):
        plan = by_op["prune-channels"]  # the split attention is part of the pruning plan, as ever
        assert set(plan) == {"attrs", "groups", "split_attention"}
        assert plan["split_attention"] == ["layers.0.self_attn", "layers.1.self_attn"]


def test_specs_written_by_earlier_versions_rebuild_the_same_modules() -> None:
    old = [
        {"class": "Int8DynamicLinear", "in_features": 8, "out_features": 4, "bias": True},  # before "smooth"
        {
            "class": "Int8DynamicLinear",
            "in_features": 8,
            "out_features": 4,
            "bias": False,
            "smooth": True,
            "outliers": 2,
        },
        {"class": "Int8WeightOnlyLinear", "in_features": 8, "out_features": 4, "bias": True},
        {"class": "Int8Embedding", "num_embeddings": 5, "embedding_dim": 3, "padding_idx": None},
        {
            "class": "Int8Embedding",
            "num_embeddings": 5,
            "embedding_dim": 3,
            "padding_idx": 0,
            "output_dtype": "bfloat16",
        },
        {"class": "Int8StaticLinear", "in_features": 8, "out_features": 4, "relu": True},
        {"class": "Int4WeightOnlyLinear", "in_features": 64, "out_features": 4, "bias": True, "group_size": 32},
    ]
    built = [module_from_spec(spec) for spec in old]
    assert [type(m).__name__ for m in built] == [s["class"] for s in old]
    assert built[0].smooth is None and built[1].outlier_idx.numel() == 2 and built[1].bias is None
    assert built[4].output_dtype == torch.bfloat16 and built[4].padding_idx == 0
    assert built[6].input_scale is None and built[6].kernel  # absent keys: their old defaults
    assert module_spec(built[2]) == old[2] and module_spec(built[3]) == old[3] and module_spec(built[4]) == old[4]


EXAMPLES = {
    "Int8DynamicLinear": lambda: ts.Int8DynamicLinear.from_float(
        nn.Linear(16, 8), smooth=torch.ones(16), outliers=torch.tensor([3, 5])
    ),
    "Int8WeightOnlyLinear": lambda: ts.Int8WeightOnlyLinear.from_float(nn.Linear(16, 8, bias=False)),
    "Int8Embedding": lambda: ts.Int8Embedding.from_float(nn.Embedding(6, 4, padding_idx=1)),
    "Int8StaticLinear": lambda: ts.Int8StaticLinear(16, 8, relu=True),
    "Int8StaticConv2d": lambda: module_from_spec(
        {
            "class": "Int8StaticConv2d",
            "in_channels": 2,
            "out_channels": 4,
            "kernel_size": [3, 3],
            "stride": [1, 1],
            "padding": [1, 1],
            "dilation": [1, 1],
            "groups": 1,
            "relu": False,
            "output_uint8": True,
        }
    ),  # fmt: skip
    "Int8MaxPool2d": lambda: module_from_spec(
        {"class": "Int8MaxPool2d", "kernel_size": 2, "stride": 2, "padding": 0, "dilation": 1}
        | {"return_indices": False, "ceil_mode": False}
    ),
    "Int4WeightOnlyLinear": lambda: ts.Int4WeightOnlyLinear.from_float(nn.Linear(64, 16), group_size=32),
    "LowRankLinear": lambda: module_from_spec(
        {"class": "LowRankLinear", "in_features": 8, "out_features": 4, "rank": 2, "bias": False}
    ),
    "LowRankConv2d": lambda: module_from_spec(
        {
            "class": "LowRankConv2d",
            "in_channels": 3,
            "out_channels": 8,
            "kernel_size": [3, 3],
            "stride": [2, 2],
            "padding": "valid",
            "dilation": [1, 1],
            "padding_mode": "zeros",
            "bias": True,
            "rank": 2,
        }
    ),  # fmt: skip
    "PrunedMultiheadAttention": lambda: module_from_spec(
        {
            "class": "PrunedMultiheadAttention",
            "embed_dim": 8,
            "num_heads": 2,
            "head_dim": 2,
            "kdim": 8,
            "vdim": 6,
            "bias": True,
            "out_bias": False,
            "dropout": 0.0,
            "batch_first": True,
        }
    ),  # fmt: skip
}


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_a_module_rebuilt_from_its_spec_has_the_same_spec_and_state_layout(kind) -> None:
    module = EXAMPLES[kind]()
    spec = module_spec(module)
    assert spec["class"] == kind and json.loads(json.dumps(spec)) == spec  # JSON values only
    fresh = module_from_spec(spec)
    assert type(fresh) is type(module) and module_spec(fresh) == spec
    shapes = {k: (tuple(t.shape), t.dtype) for k, t in module.state_dict().items()}
    assert {k: (tuple(t.shape), t.dtype) for k, t in fresh.state_dict().items()} == shapes


def test_every_builtin_swapped_module_is_registered() -> None:
    assert set(EXAMPLES) <= set(spec_kinds())


def test_unknown_kinds_and_unregistered_modules_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown module spec"):
        module_from_spec({"class": "os.system", "cmd": "true"})
    with pytest.raises(ValueError, match="malformed module spec"):
        module_from_spec({"class": "Int8WeightOnlyLinear", "in_features": 8})
    with pytest.raises(TypeError, match="no spec for Linear"):
        module_spec(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="needs torchslim_spec"):
        register_spec_module(nn.Identity)


def test_a_crafted_spec_in_an_artifact_is_unsafe_input(tmp_path) -> None:
    model = mlp()
    ts.compress_(model, ts.Int8WeightOnly())
    ts.save(model, tmp_path / "art")
    path = tmp_path / "art" / "structure.json"
    text = path.read_text().replace('"Int8WeightOnlyLinear"', '"Sequential"')
    path.write_text(text)
    manifest = tmp_path / "art" / "manifest.json"
    meta = json.loads(manifest.read_text())
    meta["files"]["structure.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(meta))
    with pytest.raises(UnsafeInputError, match="unknown module spec"):
        ts.load(tmp_path / "art", factory=mlp)
