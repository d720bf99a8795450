"""Fuzz the weight readers: ``parse_safetensors`` (header and body) and ``load_state_dict_file``
(``--weights``: ``.safetensors`` and ``.pt`` through ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import io
import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from torchslim.errors import UnsafeInputError
from torchslim.io import load_state_dict_file, parse_safetensors

pytestmark = pytest.mark.fuzz
FUZZ = settings.get_profile("torchslim-fuzz")

VALID = {
    "w": torch.arange(24, dtype=torch.float32).reshape(4, 6),
    "b": torch.arange(6, dtype=torch.bfloat16),
    "q": torch.arange(-8, 8, dtype=torch.int8),
}
VALID_ST = st_save(VALID)
_buf = io.BytesIO()
torch.save(VALID, _buf)
VALID_PT = _buf.getvalue()

DTYPES = st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "I32", "I64", "F64", "BOOL", "F8_E4M3"]) | st.text(
    max_size=5
)
LIES = st.integers(0, 64) | st.integers(-(2**63), 2**64) | st.sampled_from([2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1])
JSON = st.recursive(
    st.none() | st.booleans() | LIES | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
ENTRY = st.fixed_dictionaries(
    {"dtype": DTYPES, "shape": st.lists(LIES, max_size=4), "data_offsets": st.lists(LIES, max_size=3)}
)
HEADER = st.dictionaries(st.text(max_size=8), ENTRY | JSON, max_size=4)


def _file(header: object, body: bytes, declared: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + body


@FUZZ
@given(data=st.data())
def test_parse_safetensors_mutated(data, mutate, refused_or_ok):
    out = refused_or_ok(parse_safetensors, mutate(data, VALID_ST), "fuzz")
    if isinstance(out, dict):
        assert all(isinstance(t, torch.Tensor) for t in out.values())


@FUZZ
@given(header=HEADER, body=st.binary(max_size=256), declared=st.none() | LIES.filter(lambda n: n >= 0))
def test_parse_safetensors_header_lies(header, body, declared, refused_or_ok):
    refused_or_ok(parse_safetensors, _file(header, body, declared % 2**64 if declared else declared), "fuzz")


@pytest.mark.parametrize("depth", [200, 100_000])
def test_parse_safetensors_deeply_nested_header(depth):
    data = struct.pack("<Q", 2 * depth) + b"[" * depth + b"]" * depth
    with pytest.raises(UnsafeInputError, match="not a valid safetensors file"):
        parse_safetensors(data, "nested")


def test_parse_safetensors_lying_shape_is_refused():
    # A header that claims a 2**40-element tensor over 8 bytes of body: refused, nothing allocated.
    data = _file({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(UnsafeInputError, match="not a valid safetensors file"):
        parse_safetensors(data, "lie")


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_load_state_dict_file_mutated(data, suffix, mutate, refused_or_ok):
    valid = VALID_ST if suffix == ".safetensors" else VALID_PT
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"w{suffix}"
        path.write_bytes(mutate(data, valid))
        out = refused_or_ok(load_state_dict_file, path)
    if isinstance(out, dict):
        assert all(isinstance(t, torch.Tensor) for t in out.values())


@FUZZ
@given(body=st.binary(max_size=512), suffix=st.sampled_from([".safetensors", ".pt", ".bin"]))
def test_load_state_dict_file_generated(body, suffix, refused_or_ok):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"w{suffix}"
        path.write_bytes(body)
        refused_or_ok(load_state_dict_file, path)


def test_corrupt_zip_weights_are_refused(tmp_path):
    # Found by fuzzing: a bit flip in a .pt's central directory made zipfile raise BadZipFile.
    bad = bytearray(VALID_PT)
    at = bytes(bad).rfind(b"PK\x01\x02")
    bad[at] ^= 1
    path = tmp_path / "w.pt"
    path.write_bytes(bytes(bad))
    with pytest.raises(UnsafeInputError, match="w.pt"):
        load_state_dict_file(path)


def test_empty_pt_is_refused_with_a_message(tmp_path):
    # Found by fuzzing: torch.load's EOFError has an empty message, and the message line was str(e).splitlines()[0].
    path = tmp_path / "w.pt"
    path.write_bytes(b"")
    with pytest.raises(UnsafeInputError, match=r"w\.pt: refused by torch.load\(weights_only=True\): EOFError"):
        load_state_dict_file(path)


def test_broken_zip64_locator_is_refused(tmp_path):
    # Found by the long fuzz run: one flipped bit in a .pt's ZIP64 locator made zipfile.is_zipfile itself
    # raise BadZipFile ("zipfiles that span multiple disks are not supported").
    bad = bytearray(VALID_PT)
    bad[22073 % (len(bad) + 1)] ^= 1 << 1
    path = tmp_path / "w.pt"
    path.write_bytes(bytes(bad))
    with pytest.raises(UnsafeInputError, match="corrupt zip archive"):
        load_state_dict_file(path)


def test_unknown_zip_version_is_refused(tmp_path):
    # Found by the long fuzz run: two bytes over a central-directory entry's version made zipfile.ZipFile
    # raise NotImplementedError ("zip file version 6.4").
    bad = bytearray(VALID_PT)
    at = 3874 % (len(bad) + 1)
    bad[at : at + 2] = b"\x00@"
    path = tmp_path / "w.pt"
    path.write_bytes(bytes(bad))
    with pytest.raises(UnsafeInputError, match="corrupt zip archive"):
        load_state_dict_file(path)
