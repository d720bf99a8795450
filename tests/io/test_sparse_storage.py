from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import UnsafeInputError
from torchslim.io.deflate import deflate_tensor, inflate_tensor
from torchslim.io.sparse import decode_sparse, encode_sparse
from torchslim.pruning import MagnitudePruning


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


@pytest.mark.parametrize("density", [0.5, 0.1, 0.01])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_encode_decode_exact(density, dtype):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(64, 64, generator=g) * 50).to(dtype)
    t[torch.rand(64, 64, generator=g) > density] = 0
    enc = encode_sparse(t)
    assert enc is not None or density == 0.5
    if enc is not None:
        # The smallest of the three layouts wins (bytes per element at 50% / 10% / 1% density).
        nnz, item = int((t != 0).sum()), t.element_size()
        sizes = {"bitmask": nnz * item + (t.numel() + 7) // 8, "indices": nnz * (item + 4)}
        assert sum(v.numel() * v.element_size() for v in enc.tensors.values()) <= min(sizes.values())
        assert torch.equal(decode_sparse(enc.meta, enc.tensors), t)


def test_deltas_bridge_long_gaps_and_win_for_int8():
    t = torch.zeros(5000, dtype=torch.int8)
    t[0:600:3] = -128  # 200 non-zeros 3 apart
    t[1300], t[4999] = 7, 1
    enc = encode_sparse(t, deflate=False)  # the raw layout (tampered with below)
    assert enc.format == "deltas" and torch.equal(decode_sparse(enc.meta, enc.tensors), t)
    # gaps 597 -> 1300 (702: two 255-steps of stored zeros, then 192) and 1300 -> 4999 (3699: 14 fillers)
    assert enc.tensors["deltas"].numel() == 202 + 2 + 14
    bad = enc.tensors["deltas"].clone()
    bad[0] = 0
    with pytest.raises(UnsafeInputError):
        decode_sparse(enc.meta, dict(enc.tensors, deltas=bad))
    too_far = enc.tensors["deltas"].clone()
    too_far[-1] = 255
    with pytest.raises(UnsafeInputError):
        decode_sparse(enc.meta, dict(enc.tensors, deltas=too_far))


def test_inconsistent_parts_refused():
    t = torch.zeros(1000)
    t[::7] = 1
    enc = encode_sparse(t, deflate=False)
    bad = dict(enc.tensors, values=enc.tensors["values"][:-1])
    with pytest.raises(UnsafeInputError):
        decode_sparse(enc.meta, bad)
    t2 = torch.zeros(10000)
    t2[::500] = 1
    enc2 = encode_sparse(t2, deflate=False)
    assert enc2.format == "indices"
    with pytest.raises(UnsafeInputError):
        decode_sparse(enc2.meta, dict(enc2.tensors, indices=enc2.tensors["indices"].flip(0)))


def test_file_shrinks_with_sparsity_and_round_trip_exact(tmp_path):
    x = torch.randn(4, 64)
    sizes = []
    for sparsity in (0.0, 0.5, 0.8, 0.9, 0.95):
        m = build()
        if sparsity:
            ts.compress_(m, MagnitudePruning(sparsity=sparsity, keep_first_last=False))
        out = tmp_path / f"s{sparsity}"
        ts.save(m, out)
        size = (out / "model.safetensors").stat().st_size
        assert size == ts.measure(m).size_bytes
        sizes.append(size)
        m2 = ts.load(out, factory=build)
        sd, sd2 = m.state_dict(), m2.state_dict()
        assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
        assert torch.equal(m2(x), m(x))
    assert all(b < a for a, b in zip(sizes, sizes[1:], strict=False))
    assert sizes[3] < 0.15 * sizes[0]  # 90% sparse: values + bitmask, ~0.135x of dense


def test_deflate_codes_low_entropy_streams_and_round_trips():
    # A 90%-sparse int8 tensor with small values: the byte deltas and values both compress.
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-6, 7, (128, 64, 9), generator=g, dtype=torch.int8)
    t[torch.rand(t.shape, generator=g) > 0.1] = 0
    raw, coded = encode_sparse(t, deflate=False), encode_sparse(t)
    assert coded.format == raw.format == "deltas" and set(coded.meta["deflate"]) == {"deltas", "values"}
    nbytes = lambda enc: sum(v.numel() * v.element_size() for v in enc.tensors.values())  # noqa: E731
    assert nbytes(coded) < 0.8 * nbytes(raw)
    assert torch.equal(decode_sparse(coded.meta, coded.tensors), t)
    # High-entropy fp32 values stay raw (nothing to gain), so they load without work.
    f = torch.randn(64, 64, generator=g)
    f[torch.rand(64, 64, generator=g) > 0.1] = 0
    enc = encode_sparse(f)
    assert "values" not in enc.meta.get("deflate", {}) and torch.equal(decode_sparse(enc.meta, enc.tensors), f)


def test_inflate_refuses_corrupt_and_oversized_streams():
    t = torch.zeros(100_000, dtype=torch.uint8)
    packed, info = deflate_tensor(t)
    assert packed.numel() < 1000 and torch.equal(inflate_tensor(packed, info), t)
    with pytest.raises(UnsafeInputError, match="different amount"):  # a bomb: more bytes than declared
        inflate_tensor(packed, dict(info, numel=1000))
    with pytest.raises(UnsafeInputError, match="different amount"):  # fewer bytes than declared
        inflate_tensor(packed, dict(info, numel=200_000))
    bad = packed.clone()
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(UnsafeInputError):
        inflate_tensor(bad, info)
    with pytest.raises(UnsafeInputError, match="malformed"):
        inflate_tensor(packed, {"dtype": "complex64", "numel": 5})
    assert deflate_tensor(torch.arange(10, dtype=torch.uint8)) is None  # too small to gain


def test_dense_tensor_is_left_dense_without_building_its_positions(monkeypatch):
    # The positions of every element (int64, 8 bytes each) cost ~4 GB of peak memory on a 542 M-parameter
    # model's embedding table for nothing: a dense tensor is decided from its non-zero count alone.
    def no_positions(*_a, **_k):
        raise AssertionError("torch.nonzero called on a dense tensor")

    monkeypatch.setattr(torch, "nonzero", no_positions)
    assert encode_sparse(torch.randn(300, 300)) is None
    assert encode_sparse(torch.randint(1, 127, (300, 300), dtype=torch.int8)) is None
