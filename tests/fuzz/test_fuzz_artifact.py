"""Fuzz ``ts.load`` on artifact folders: ``model.safetensors``, ``structure.json``, ``manifest.json``,
the sparse streams and their DEFLATE coding, and the replay of the structure ops.

Two seed artifacts are mutated: ``int8-sparse`` (a pruned MLP stored as sparse DEFLATE deltas, then
int8: the ``int8-modules`` op) and ``structure-ops`` (a tiny embedding + residual MLP + conv net through
``fold-batchnorm``, ``layer-dropping``, ``prune-channels``, ``low-rank``, ``factorize-embedding`` and
``cast-dtype``).

A mutated file gets a fresh manifest checksum (anyone can compute a sha256), so the parsers behind the
integrity check are reached, not only the checksum comparison.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from json_lies import JSON, replace_one_value
from tiny_nets import ResidualBlock

import torchslim as ts
from torchslim.errors import UnsafeInputError
from torchslim.io.deflate import inflate_tensor
from torchslim.io.sparse import decode_sparse

pytestmark = pytest.mark.fuzz
FUZZ = settings.get_profile("torchslim-fuzz")
FILES = ("model.safetensors", "structure.json", "manifest.json")


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


class _Net(nn.Module):
    """Token ids -> embedding -> four residual blocks -> 1x1 conv + batch norm -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.blocks = nn.ModuleList([ResidualBlock() for _ in range(4)])
        self.conv, self.bn = nn.Conv1d(16, 16, 1), nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.bn(self.conv(x.transpose(1, 2))).mean(-1))


def build_structured() -> nn.Module:
    torch.manual_seed(0)
    return _Net().eval()


IDS = torch.arange(10).reshape(2, 5)
# seed name -> (factory, fixture with its valid files, an input of the model)
SEEDS = {
    "int8-sparse": (build, "valid_files", torch.zeros(1, 64)),
    "structure-ops": (build_structured, "structured_files", IDS),
}


@pytest.fixture(scope="module")
def valid_files() -> dict[str, bytes]:
    """The files of a pruned (90%, sparse deltas with DEFLATE) and int8 artifact (a structure op)."""
    m = build()
    ts.compress_(m, ts.MagnitudePruning(sparsity=0.9))
    ts.compress_(m, ts.Int8WeightOnly())
    with tempfile.TemporaryDirectory() as d:
        ts.save(m, Path(d) / "a")
        files = {name: (Path(d) / "a" / name).read_bytes() for name in FILES}
    assert b'"deflate"' in files["structure.json"]
    return files


@pytest.fixture(scope="module")
def structured_files() -> dict[str, bytes]:
    """The files of the tiny net after six structure ops (each one recorded in ``structure.json``)."""
    from torchslim.structured import FactorizeEmbedding

    m, ctx = build_structured(), ts.Context(example_inputs=(IDS,))
    ts.compress_(m, ts.FoldBatchNorm(), ctx=ctx)
    ts.compress_(m, ts.LayerDropping(every_k=2), ctx=ctx)
    ts.compress_(m, ts.ChannelPruning(ratio=0.5), select=ts.Select(include=(r"blocks",)), ctx=ctx)
    ts.compress_(m, ts.LowRank(rank_ratio=0.25), select=ts.Select(include=(r"\.up$",)), ctx=ctx)
    ts.compress_(m, FactorizeEmbedding(rank=4), ctx=ctx)
    ts.compress_(m, ts.CastDtype(), select=ts.Select(include=(r"head",)), ctx=ctx)
    with tempfile.TemporaryDirectory() as d:
        ts.save(m, Path(d) / "a")
        files = {name: (Path(d) / "a" / name).read_bytes() for name in FILES}
    ops = [op["op"] for op in json.loads(files["structure.json"])["ops"]]
    assert ops == [
        "fold-batchnorm",
        "layer-dropping",
        "prune-channels",
        "low-rank",
        "factorize-embedding",
        "cast-dtype",
    ]
    return files


def _load(files: dict[str, bytes], *, rehash: bool = True, factory=build):
    """``ts.load`` of a folder holding ``files``; with ``rehash`` the manifest lists their true checksums."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "a"
        root.mkdir()
        if rehash:
            try:
                manifest = json.loads(files["manifest.json"])
                manifest["files"] = {n: hashlib.sha256(files[n]).hexdigest() for n in FILES if n != "manifest.json"}
                files = {**files, "manifest.json": json.dumps(manifest).encode()}
            except (ValueError, TypeError, KeyError):
                pass  # a mutated manifest is loaded as it is
        for name, data in files.items():
            (root / name).write_bytes(data)
        return ts.load(root, factory=factory)


@pytest.mark.parametrize("seed", list(SEEDS))
@FUZZ
@given(data=st.data(), name=st.sampled_from(FILES))
def test_load_mutated_file(seed, data, name, request, mutate, refused_or_ok):
    factory, fixture, x = SEEDS[seed]
    valid_files = request.getfixturevalue(fixture)  # module-scoped: built once, not per example
    files = {**valid_files, name: mutate(data, valid_files[name])}
    out = refused_or_ok(_load, files, rehash=name != "manifest.json", factory=factory)
    if isinstance(out, nn.Module):
        out(x)


@pytest.mark.parametrize("seed", list(SEEDS))
@FUZZ
@given(data=st.data(), name=st.sampled_from(["structure.json", "manifest.json"]))
def test_load_json_lies(seed, data, name, request, refused_or_ok):
    """Replace one value anywhere in the JSON (a shape, a dtype, a length, a format, an op) by another."""
    factory, fixture, x = SEEDS[seed]
    valid_files = request.getfixturevalue(fixture)
    obj = json.loads(valid_files[name])
    obj = replace_one_value(data, obj)
    files = {**valid_files, name: json.dumps(obj).encode()}
    out = refused_or_ok(_load, files, rehash=name != "manifest.json", factory=factory)
    if isinstance(out, nn.Module):
        out(x)


@pytest.mark.parametrize("name", ["structure.json", "manifest.json"])
def test_deeply_nested_json_is_refused(name, valid_files):
    # A targeted input (deep nesting): json.loads raised RecursionError on 100,000 nested lists.
    files = {**valid_files, name: b"[" * 100_000 + b"]" * 100_000}
    with pytest.raises(UnsafeInputError, match="nested"):
        _load(files, rehash=name != "manifest.json")


def _bomb(n_bytes: int) -> torch.Tensor:
    """A DEFLATE stream of ``n_bytes`` zeros (about 1/200 of that size), built without holding them."""
    z, chunk = zlib.compressobj(1), bytes(1 << 20)
    packed = b"".join(z.compress(chunk) for _ in range(n_bytes >> 20)) + z.flush()
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8)


def test_decompression_bomb_is_refused_before_inflating(valid_files):
    # A 64 MB bomb posing as the values of the 32x64 weight: refused from its recorded length, not inflated.
    structure = json.loads(valid_files["structure.json"])
    entry = structure["sparse"]["0.weight"]
    entry["format"] = "bitmask"
    entry["deflate"] = {"values": {"dtype": "int8", "numel": 64 << 20}}
    tensors = {"values": _bomb(64 << 20), "bitmask": torch.zeros(256, dtype=torch.uint8)}
    with pytest.raises(UnsafeInputError, match="larger than"):
        decode_sparse(entry, tensors, expect=((32, 64), torch.int8))
    with pytest.raises(UnsafeInputError, match="larger than"):
        inflate_tensor(tensors["values"], {"dtype": "int8", "numel": 64 << 20}, max_numel=2048)


def test_shape_lie_in_sparse_entry_is_refused_before_allocating():
    # Found by review while writing the fuzzer: a sparse entry claiming shape [2**40] made decode_sparse allocate it.
    meta = {"shape": [2**20, 2**20], "dtype": "float32", "format": "indices"}
    tensors = {"values": torch.ones(1), "indices": torch.zeros(1, dtype=torch.int32)}
    with pytest.raises(UnsafeInputError, match="shape"):
        decode_sparse(meta, tensors)
    with pytest.raises(UnsafeInputError, match="the model expects"):
        decode_sparse({**meta, "shape": [1024]}, tensors, expect=((32, 64), torch.float32))


TENSOR = st.builds(
    lambda raw, dtype: torch.tensor(list(raw), dtype=torch.uint8)[: len(raw) // dtype.itemsize * dtype.itemsize].view(
        dtype
    ),
    st.binary(max_size=128),
    st.sampled_from([torch.uint8, torch.int8, torch.int32, torch.float32, torch.bfloat16]),
)
DTYPE_NAMES = st.sampled_from(["float32", "int8", "uint8", "int32", "bfloat16", "float64", "bool", "x"])
META = st.fixed_dictionaries(
    {
        "shape": st.lists(st.integers(-2, 64) | st.integers(-(2**70), 2**70), max_size=3),
        "dtype": DTYPE_NAMES,
        "format": st.sampled_from(["bitmask", "indices", "deltas", "other"]),
    },
    optional={
        "deflate": st.dictionaries(
            st.sampled_from(["values", "bitmask", "indices", "deltas"]),
            st.fixed_dictionaries({"dtype": DTYPE_NAMES, "numel": st.integers(-4, 1 << 40)}) | JSON,
            max_size=2,
        )
        | JSON
    },
)


@FUZZ
@given(
    meta=META | JSON,
    tensors=st.dictionaries(st.sampled_from(["values", "bitmask", "indices", "deltas"]), TENSOR, max_size=3),
)
def test_decode_sparse_generated(meta, tensors, refused_or_ok):
    refused_or_ok(decode_sparse, meta, tensors)


@FUZZ
@given(data=st.data(), numel=st.integers(-4, 1 << 40), dtype=DTYPE_NAMES)
def test_inflate_mutated_stream(data, numel, dtype, mutate, refused_or_ok):
    valid = zlib.compress(bytes(range(256)) * 4, 9)
    packed = torch.frombuffer(bytearray(mutate(data, valid)) or bytearray(1), dtype=torch.uint8)
    refused_or_ok(inflate_tensor, packed, {"dtype": dtype, "numel": numel}, max_numel=4096)


def test_zero_length_claim_does_not_inflate_without_bound():
    # Found in review while fuzzing: numel 0 made the bound zlib's max_length=0, which means "no limit".
    bomb = _bomb(256 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeInputError, match="expected 0 bytes"):
            inflate_tensor(bomb, {"dtype": "uint8", "numel": 0})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"inflating took {peak >> 20} MB"


def test_structure_op_claiming_a_huge_module_is_refused_before_allocating(valid_files):
    # Found by the long fuzz run (killed by the kernel at 23 GB): an int8-modules op whose spec claims
    # in/out features of 100,000 built a 10 GB module before the stored tensors were compared.
    structure = json.loads(valid_files["structure.json"])
    spec = structure["ops"][0]["data"]["modules"][0][1]
    spec["in_features"] = spec["out_features"] = 100_000
    files = {**valid_files, "structure.json": json.dumps(structure).encode()}
    with pytest.raises(UnsafeInputError, match="claims 10000"):  # and the autouse fixture bounds the memory
        _load(files)


@FUZZ
@given(
    names=st.dictionaries(st.text(max_size=12) | st.text(min_size=200, max_size=400), st.text(max_size=64), max_size=3)
)
def test_load_manifest_file_names(names, valid_files, refused_or_ok):
    manifest = json.loads(valid_files["manifest.json"])
    manifest["files"].update(names)
    refused_or_ok(_load, {**valid_files, "manifest.json": json.dumps(manifest).encode()}, rehash=False)


def test_manifest_name_too_long_for_the_file_system_is_refused(valid_files):
    # Found by a hand-made manifest while writing the fuzzer: a 300-character name raised OSError (ENAMETOOLONG).
    manifest = json.loads(valid_files["manifest.json"])
    manifest["files"]["x" * 300] = "0"
    with pytest.raises(UnsafeInputError, match="file name too long"):
        _load({**valid_files, "manifest.json": json.dumps(manifest).encode()}, rehash=False)


@pytest.mark.parametrize(
    "data",
    [{"modules": [["0", 5]]}, {"modules": 5}, {"modules": [["nope", {}]]}],
    ids=["spec-not-a-mapping", "modules-not-a-list", "unknown-module"],
)
def test_malformed_structure_op_is_unsafe_input(data, valid_files):
    # Found by hand-made ops while writing the fuzzer: the replays raised ValueError, TypeError, AttributeError.
    structure = json.loads(valid_files["structure.json"])
    structure["ops"] = [{"op": "int8-modules", "data": data}]
    with pytest.raises(UnsafeInputError, match="a structure op cannot be replayed"):
        _load({**valid_files, "structure.json": json.dumps(structure).encode()})
