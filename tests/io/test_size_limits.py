"""The size limits of the readers of outside input: a file just over its limit is refused with
UnsafeInputError (exit 4) and "larger than", from its size alone, before it is read whole.

Each oversized file is sparse (a few real bytes, the rest a hole), and tracemalloc shows that the
reader did not hold it in memory: a read would allocate at least the file's size.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import UnsafeInputError
from torchslim.io import artifact, hf
from torchslim.io.artifact import read_safetensors_file
from torchslim.io.atomic import sha256_file
from torchslim.io.weights import load_state_dict_file
from torchslim.recipes import recipe as recipe_module
from torchslim.recipes.recipe import load_recipe


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


def oversized(path: Path, size: int, prefix: bytes = b"{") -> Path:
    """A sparse file of ``size`` bytes starting with ``prefix``."""
    with open(path, "wb") as f:
        f.write(prefix)
        f.truncate(size)
    return path


def refused_without_reading(fn, *args) -> UnsafeInputError:
    """``fn(*args)`` raises UnsafeInputError "larger than" (exit 4) while allocating less than 4 MB."""
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeInputError, match="larger than") as info:
            fn(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.exit_code == 4
    assert peak < 4 << 20, f"the reader allocated {peak >> 20} MB: it read the oversized file"
    return info.value


@pytest.fixture
def art(tmp_path) -> Path:
    ts.save(build(), tmp_path / "a")
    return tmp_path / "a"


def load_with_factory(root: Path):
    return ts.load(root, factory=build)


def rehash(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = {n: sha256_file(root / n) for n in manifest["files"]}
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["structure.json", "manifest.json"])
def test_artifact_json_just_over_max_json_bytes_is_refused(name, art):
    oversized(art / name, artifact.MAX_JSON_BYTES + 1)
    if name != "manifest.json":
        rehash(art)  # so that the checksum passes and the JSON reader is reached
    e = refused_without_reading(load_with_factory, art)
    assert name in str(e) and str(artifact.MAX_JSON_BYTES) in str(e)


def test_artifact_json_at_max_json_bytes_is_read(art, monkeypatch):
    size = max((art / name).stat().st_size for name in ("structure.json", "manifest.json"))
    monkeypatch.setattr(artifact, "MAX_JSON_BYTES", size)
    assert isinstance(ts.load(art, factory=build), nn.Sequential)
    monkeypatch.setattr(artifact, "MAX_JSON_BYTES", size - 1)
    with pytest.raises(UnsafeInputError, match="larger than"):
        ts.load(art, factory=build)


def test_safetensors_header_over_max_header_bytes_is_refused_from_its_first_bytes(art, monkeypatch):
    monkeypatch.setattr(artifact, "MAX_HEADER_BYTES", 1000)
    oversized(art / "model.safetensors", 16 << 20, struct.pack("<Q", 1001) + b"{")
    rehash(art)
    e = refused_without_reading(load_with_factory, art)
    assert "header length 1001" in str(e)
    e = refused_without_reading(read_safetensors_file, art / "model.safetensors")
    assert "header length 1001" in str(e)
    e = refused_without_reading(load_state_dict_file, art / "model.safetensors")  # --weights FILE
    assert "header length 1001" in str(e)


def test_safetensors_header_at_the_limit_is_read(tmp_path, monkeypatch):
    from safetensors.torch import save

    data = save({"w": torch.ones(3)})
    (header_len,) = struct.unpack("<Q", data[:8])
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    monkeypatch.setattr(artifact, "MAX_HEADER_BYTES", header_len)
    assert torch.equal(read_safetensors_file(path)["w"], torch.ones(3))
    monkeypatch.setattr(artifact, "MAX_HEADER_BYTES", header_len - 1)
    with pytest.raises(UnsafeInputError, match="larger than the file or the limit"):
        read_safetensors_file(path)


def test_safetensors_header_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 64) + b"{}")
    with pytest.raises(UnsafeInputError, match="header length 64 is larger than the file"):
        read_safetensors_file(path)


def test_recipe_just_over_max_recipe_bytes_is_refused(tmp_path):
    path = oversized(tmp_path / "r.yaml", recipe_module.MAX_RECIPE_BYTES + 1, b"name: x\n")
    e = refused_without_reading(load_recipe, path)
    assert str(recipe_module.MAX_RECIPE_BYTES) in str(e)


def test_recipe_at_max_recipe_bytes_is_read(tmp_path, monkeypatch):
    text = "name: small\nsteps:\n  - kind: cast-dtype\n"
    path = tmp_path / "r.yaml"
    path.write_text(text)
    monkeypatch.setattr(recipe_module, "MAX_RECIPE_BYTES", len(text))
    assert load_recipe(path).name == "small"
    monkeypatch.setattr(recipe_module, "MAX_RECIPE_BYTES", len(text) - 1)
    with pytest.raises(UnsafeInputError, match="larger than"):
        load_recipe(path)


def test_hf_config_just_over_max_config_bytes_is_refused(tmp_path):
    pytest.importorskip("transformers")
    oversized(tmp_path / "config.json", hf.MAX_CONFIG_BYTES + 1)
    for reader in (hf.hf_example_inputs, hf.load_hf_model):  # once untraced: transformers' lazy imports
        with pytest.raises(UnsafeInputError, match="larger than"):
            reader(tmp_path)
    e = refused_without_reading(hf.hf_example_inputs, tmp_path)
    assert "config.json" in str(e) and str(hf.MAX_CONFIG_BYTES) in str(e)
    refused_without_reading(hf.load_hf_model, tmp_path)


def test_hf_config_at_the_limit_is_read(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    config = {"model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    size = (tmp_path / "config.json").stat().st_size
    monkeypatch.setattr(hf, "MAX_CONFIG_BYTES", size)
    assert "input_ids" in str(hf.hf_example_inputs(tmp_path, batch=1, seq=4))
    monkeypatch.setattr(hf, "MAX_CONFIG_BYTES", size - 1)
    with pytest.raises(UnsafeInputError, match="larger than"):
        hf.hf_example_inputs(tmp_path, batch=1, seq=4)
