from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from torchslim.errors import OutputExistsError, UnsafeInputError, UsageError
from torchslim.io import atomic_dir, load_state_dict_file, sha256_file


def test_atomic_dir_writes_manifest_last_with_checksums(tmp_path):
    target = tmp_path / "art"
    with atomic_dir(target, manifest={"seed": 1}) as tmp:
        (tmp / "a.bin").write_bytes(b"abc")
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["seed"] == 1
    assert manifest["files"] == {"a.bin": sha256_file(target / "a.bin")}
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_refuses_non_empty_without_force_and_keeps_it(tmp_path):
    target = tmp_path / "art"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(OutputExistsError), atomic_dir(target):
        pass
    assert (target / "keep.txt").read_text() == "old"


def test_crash_leaves_old_artifact_and_no_temp(tmp_path):
    target = tmp_path / "art"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target, force=True) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("crash mid-write")
    assert (target / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    with atomic_dir(target, force=True) as tmp:
        (tmp / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_stale_temp_folders_cleaned(tmp_path):
    stale = tmp_path / ".torchslim-tmp-art-abc"
    stale.mkdir()
    with atomic_dir(tmp_path / "art") as tmp:
        (tmp / "x").write_text("x")
    assert not stale.exists()


def test_load_safetensors_and_pt(tmp_path):
    sd = {"w": torch.arange(4.0)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pt")
    assert torch.equal(load_state_dict_file(tmp_path / "w.safetensors")["w"], sd["w"])
    assert torch.equal(load_state_dict_file(tmp_path / "w.pt")["w"], sd["w"])


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"w": _Evil(str(marker))}, f)
    with pytest.raises(UnsafeInputError):
        load_state_dict_file(p)
    assert not marker.exists()


def test_torchscript_refused_and_garbage_and_nan(tmp_path):
    ts_path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(ts_path))
    with pytest.raises(UnsafeInputError, match="TorchScript"):
        load_state_dict_file(ts_path)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(UnsafeInputError):
        load_state_dict_file(garbage)
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(tmp_path / "n.safetensors"))
    with pytest.raises(UnsafeInputError, match="NaN"):
        load_state_dict_file(tmp_path / "n.safetensors")
    with pytest.raises(UsageError):
        load_state_dict_file(tmp_path / "missing.safetensors")
