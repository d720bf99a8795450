"""Fuzz the Hugging Face readers: ``--model hf:DIR`` (``load_hf_model``, ``hf_example_inputs``) and ``ts.load``
of an artifact holding a transformers ``config.json``.

Inputs: byte mutations of ``config.json``, ``model.safetensors`` and ``model.safetensors.index.json``; one
value anywhere in ``config.json`` or the index replaced by generated JSON; size fields (vocabulary, hidden
size, layers, intermediate size, heads, positions) set to generated integers up to 2**64, so that a
config claiming terabytes is refused before anything is allocated (:mod:`torchslim.io.config_bound`).

Allowed outcomes here: success, exit 3 or 4, and also exit 5 (``UnsupportedModelError``), which is the
documented answer of these readers for an architecture this transformers cannot build or that does not fit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from json_lies import replace_one_value

pytest.importorskip("transformers")

from transformers import BertConfig, BertModel  # noqa: E402

import torchslim as ts  # noqa: E402
from torchslim.errors import ConfigError, TorchslimError, UnsafeInputError, UnsupportedModelError  # noqa: E402
from torchslim.io import hf_example_inputs, load_hf_model  # noqa: E402

pytestmark = pytest.mark.fuzz
_BASE = settings.get_profile("torchslim-fuzz")
# A transformers load costs tens of milliseconds: the CI default is a third of the profile's inputs.
FUZZ = settings(_BASE, max_examples=_BASE.max_examples if "TORCHSLIM_FUZZ_EXAMPLES" in os.environ else 20)
SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
             "max_position_embeddings", "type_vocab_size")  # fmt: skip
BIG = st.integers(-4, 2**64) | st.sampled_from([0, 1, 2**31, 2**40, 10**12, 2**63 - 1, 2**64])
BOUND_BYTES = str(256 << 20)  # the fuzz tests' model bound (TORCHSLIM_MAX_MODEL_BYTES), under conftest's memory bound


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32)  # fmt: skip
    return BertModel(cfg).eval()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hf_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        tiny_bert().save_pretrained(d)
        return _files(Path(d))


@pytest.fixture(scope="module")
def sharded_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        tiny_bert().save_pretrained(d, max_shard_size="20KB")
        files = _files(Path(d))
    assert "model.safetensors.index.json" in files
    return files


@pytest.fixture(scope="module")
def artifact_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        ts.save(ts.compress_(tiny_bert(), ts.Int8WeightOnly()), Path(d) / "a")
        files = _files(Path(d) / "a")
    assert "config.json" in files
    return files


@pytest.fixture(autouse=True)
def _model_bound(monkeypatch):
    monkeypatch.setenv("TORCHSLIM_MAX_MODEL_BYTES", BOUND_BYTES)


@pytest.fixture
def hf_refused_or_ok(input_guard):
    """Call ``fn``: success, exit 3/4 (malformed input) or exit 5 (cannot build / does not fit) with a message;
    an input using ``hang_seconds`` (5 s) of CPU time, or six times that of wall time, is interrupted and
    fails as a hang (conftest's ``guard_input``)."""

    def _check(fn, *args, hang_seconds: float = 5.0):
        what = f"{fn.__name__} of files " + ", ".join(f"{n} ({len(b)} bytes)" for a in args for n, b in dict(a).items())
        try:
            with input_guard(hang_seconds, what):
                return fn(*args)
        except (UnsafeInputError, ConfigError, UnsupportedModelError) as e:
            assert str(e).strip(), "the error must name the problem"
            return e
        except TorchslimError as e:
            raise AssertionError(f"{type(e).__name__} (exit {e.exit_code}) for malformed input: {e}") from e

    return _check


def _write(files: dict[str, bytes]) -> tempfile.TemporaryDirectory:
    tmp = tempfile.TemporaryDirectory()
    for name, data in files.items():
        (Path(tmp.name) / name).write_bytes(data)
    return tmp


def _load_folder(files: dict[str, bytes]):
    with _write(files) as d:
        return load_hf_model(d)


def _example_inputs(files: dict[str, bytes]):
    with _write(files) as d:
        return hf_example_inputs(d, batch=1, seq=8)


def _load_artifact(files: dict[str, bytes]):
    """``ts.load`` of an artifact holding ``files``, its manifest re-hashed (so the readers behind it run)."""
    manifest = json.loads(files["manifest.json"])
    manifest["files"] = {n: hashlib.sha256(files[n]).hexdigest() for n in manifest["files"]}
    files = {**files, "manifest.json": json.dumps(manifest).encode()}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "a"
        root.mkdir()
        for name, data in files.items():
            (root / name).write_bytes(data)
        return ts.load(root)


def _lie(data, valid: bytes) -> bytes:
    """``valid`` JSON with one value anywhere replaced by generated JSON, or a size field by a generated integer."""
    obj = json.loads(valid)
    if isinstance(obj, dict) and data.draw(st.booleans(), label="size field"):
        obj[data.draw(st.sampled_from(SIZE_KEYS), label="key")] = data.draw(BIG, label="size")
    else:
        obj = replace_one_value(data, obj)
    return json.dumps(obj).encode()


@FUZZ
@given(data=st.data(), name=st.sampled_from(["config.json", "model.safetensors"]))
def test_hf_folder_mutated(data, name, hf_files, mutate, hf_refused_or_ok):
    out = hf_refused_or_ok(_load_folder, {**hf_files, name: mutate(data, hf_files[name])})
    if isinstance(out, torch.nn.Module):
        out(input_ids=torch.zeros(1, 4, dtype=torch.long))


@FUZZ
@given(data=st.data())
def test_hf_folder_config_lies(data, hf_files, hf_refused_or_ok):
    hf_refused_or_ok(_load_folder, {**hf_files, "config.json": _lie(data, hf_files["config.json"])})


# name -> (reader, fixture with the valid files, the JSON file that lies)
LYING_JSON = {
    "folder index": (_load_folder, "sharded_files", "model.safetensors.index.json"),
    "example inputs config": (_example_inputs, "hf_files", "config.json"),
    "artifact config": (_load_artifact, "artifact_files", "config.json"),
}


@pytest.mark.parametrize("target", list(LYING_JSON))
@FUZZ
@given(data=st.data(), mutated=st.booleans())
def test_json_lies_or_mutations(target, data, mutated, request, mutate, hf_refused_or_ok):
    reader, fixture, name = LYING_JSON[target]
    files = request.getfixturevalue(fixture)  # module-scoped: built once, not per example
    valid = files[name]
    hf_refused_or_ok(reader, {**files, name: mutate(data, valid) if mutated else _lie(data, valid)})


# -- regression tests: fixed inputs ---------------------------------------------------------------------


def _with_config(files: dict[str, bytes], **changes) -> dict[str, bytes]:
    config = json.loads(files["config.json"])
    config.update(changes)
    return {**files, "config.json": json.dumps(config).encode()}


@pytest.mark.parametrize("reader", ["folder", "artifact"])
def test_config_claiming_terabytes_is_refused_before_allocating(reader, hf_files, artifact_files, monkeypatch):
    # A 12-digit vocabulary is 64 TB of float32 embeddings; refused from the meta-device size, nothing allocated.
    monkeypatch.delenv("TORCHSLIM_MAX_MODEL_BYTES")
    load, files = (_load_folder, hf_files) if reader == "folder" else (_load_artifact, artifact_files)
    tracemalloc.start()
    try:
        with pytest.raises((UnsafeInputError, UnsupportedModelError), match="parameters"):
            load(_with_config(files, vocab_size=10**12, hidden_size=16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


@pytest.mark.parametrize("reader", ["folder", "artifact"])
def test_config_claiming_a_million_layers_is_refused_quickly(reader, hf_files, artifact_files):
    # Building even the meta-device model of a million layers would take hours: refused from the tensor count.
    load, files = (_load_folder, hf_files) if reader == "folder" else (_load_artifact, artifact_files)
    started = time.monotonic()
    with pytest.raises(UnsafeInputError, match="claims 1000000 layers"):
        load(_with_config(files, num_hidden_layers=1_000_000))
    assert time.monotonic() - started < 5


def test_model_bound_variable_refuses_a_model_over_it(hf_files, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_MAX_MODEL_BYTES", "1000")
    with pytest.raises(UnsupportedModelError, match="over the 1e-06 GB bound"):
        _load_folder(hf_files)


def test_weights_that_disagree_with_the_config_are_unsafe_input(hf_files):
    # Was RuntimeError from transformers (size mismatch) escaping load_hf_model.
    with pytest.raises(UnsafeInputError, match="do not match config.json"):
        _load_folder(_with_config(hf_files, vocab_size=60))


@pytest.mark.parametrize("architectures", [5, {"BertModel": 1}, None, "BertModel"])
def test_architectures_of_any_type_are_read(architectures, hf_files):
    # Was TypeError ('int' object is not iterable) for a number.
    model = _load_folder(_with_config(hf_files, architectures=architectures))
    assert type(model).__name__ == "BertModel"


def test_deeply_nested_config_is_refused(hf_files):
    with pytest.raises(UnsafeInputError, match="nested"):
        _load_folder({**hf_files, "config.json": b"[" * 100_000 + b"]" * 100_000})


def test_corrupt_safetensors_in_hf_folder_is_unsafe_input(hf_files):
    # Found by the quick fuzz run: one bit flipped in the header (byte 10); SafetensorError escaped.
    weights = bytearray(hf_files["model.safetensors"])
    weights[10] ^= 1
    with pytest.raises(UnsafeInputError, match="not valid safetensors"):
        _load_folder({**hf_files, "model.safetensors": bytes(weights)})


def test_config_value_of_the_wrong_type_is_unsupported(hf_files):
    # Found by the quick fuzz run: huggingface_hub's StrictDataclassFieldValidationError escaped.
    with pytest.raises(UnsupportedModelError, match="cannot read this config"):
        _load_folder(_with_config(hf_files, hidden_dropout_prob=None))


def test_example_inputs_of_a_config_that_is_not_utf8(hf_files):
    # Found by the quick fuzz run: transformers' OSError escaped hf_example_inputs.
    with pytest.raises(UnsafeInputError, match="not valid JSON"):
        _example_inputs({**hf_files, "config.json": b"\xfb" + hf_files["config.json"]})


@pytest.mark.parametrize("vocab", ["50", 2**64, -3])
def test_example_inputs_of_a_lying_vocabulary(vocab, hf_files):
    with pytest.raises((UnsafeInputError, UnsupportedModelError), match="vocab_size"):
        _example_inputs(_with_config(hf_files, vocab_size=vocab))


def test_folder_bound_counts_the_config_dtype(hf_files, monkeypatch):
    # The tiny BERT holds 6,160 elements: 24,640 bytes in float32, 12,320 in bfloat16 (loaded in its dtype).
    monkeypatch.setenv("TORCHSLIM_MAX_MODEL_BYTES", "20000")
    with pytest.raises(UnsupportedModelError, match="at 4 bytes each"):
        _load_folder(hf_files)
    assert type(_load_folder(_with_config(hf_files, dtype="bfloat16"))).__name__ == "BertModel"


@pytest.mark.parametrize("pad", [50, -51])
def test_padding_index_outside_the_vocabulary_is_unsupported(pad, hf_files):
    # Found by the long run: torch's AssertionError (padding_idx must be within num_embeddings) escaped.
    with pytest.raises(UnsupportedModelError, match="Padding_idx"):
        _load_folder(_with_config(hf_files, pad_token_id=pad))


@pytest.mark.parametrize("shard", ["lodel-00001-of-00002.safetensors", "../model.safetensors", "/etc/hostname"])
def test_index_naming_a_missing_shard_is_unsafe_input(shard, sharded_files):
    # Found by the long run: the bit-flipped shard name "lodel-..." was a UsageError (exit 2).
    index = json.loads(sharded_files["model.safetensors.index.json"])
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    with pytest.raises(UnsafeInputError, match="names the shard"):
        _load_folder({**sharded_files, "model.safetensors.index.json": json.dumps(index).encode()})


def test_a_hanging_hf_reader_is_reported_as_a_hang(hf_files, hf_refused_or_ok):
    def stuck_reader(files):
        try:
            time.sleep(30)
        except Exception as e:  # as load_hf_model turns transformers' errors into exit 5
            raise UnsupportedModelError(f"cannot build: {e}") from e

    started = time.monotonic()
    with pytest.raises(
        AssertionError,
        match=r"more than 0.2 s of CPU time or 1.2 s of wall time \(a hang\): stuck_reader of files .*config.json",
    ):
        hf_refused_or_ok(stuck_reader, hf_files, hang_seconds=0.2)
    assert time.monotonic() - started < 3
