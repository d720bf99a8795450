from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save as st_save

import torchslim as ts
from torchslim.errors import OutputExistsError, UnsafeInputError
from torchslim.io import parse_safetensors

REPO = Path(__file__).resolve().parents[2]


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    ).eval()


def compressed() -> nn.Module:
    m = build()
    m[1].running_var.uniform_(0.5, 2)
    ts.compress_(m, ts.FoldBatchNorm())
    return ts.compress_(m, ts.CastDtype("bfloat16"), select=ts.Select(types=("Linear",)))


X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_round_trip_bit_identical(tmp_path):
    m = compressed()
    ts.save(m, tmp_path / "a")
    m2 = ts.load(tmp_path / "a", factory=build)
    assert torch.equal(m2(X), m(X))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "structure.json",
    ]


def test_round_trip_in_fresh_subprocess(tmp_path):
    m = compressed()
    ts.save(m, tmp_path / "a")
    torch.save(m(X), tmp_path / "ref.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torchslim as ts
        from test_artifact import build, X
        m = ts.load({str(tmp_path / "a")!r}, factory=build)
        ref = torch.load({str(tmp_path / "ref.pt")!r}, weights_only=True)
        sys.exit(0 if torch.equal(m(X), ref) else 1)
        """
    )
    assert subprocess.run([sys.executable, "-c", script], cwd=REPO).returncode == 0


def test_tied_weights_stored_once(tmp_path):
    def tied() -> nn.Module:
        torch.manual_seed(0)
        m = nn.ModuleDict({"emb": nn.Embedding(50, 16), "head": nn.Linear(16, 50, bias=False)})
        m.head.weight = m.emb.weight
        return m

    m = tied()
    ts.save(m, tmp_path / "t")
    assert (tmp_path / "t" / "model.safetensors").stat().st_size < 50 * 16 * 4 + 200
    m2 = ts.load(tmp_path / "t", factory=tied)
    assert m2.head.weight.data_ptr() == m2.emb.weight.data_ptr() or torch.equal(m2.head.weight, m.head.weight)
    assert torch.equal(m2.emb.weight, m.emb.weight)


def test_byte_identical_twice(tmp_path):
    ts.save(compressed(), tmp_path / "a")
    ts.save(compressed(), tmp_path / "b")
    for name in ("model.safetensors", "structure.json", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_size_measure_equals_file(tmp_path):
    m = compressed()
    ts.save(m, tmp_path / "a")
    assert ts.measure(m).size_bytes == (tmp_path / "a" / "model.safetensors").stat().st_size


def test_tampered_missing_extra_files(tmp_path):
    ts.save(compressed(), tmp_path / "a")
    f = tmp_path / "a" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(UnsafeInputError, match="checksum mismatch"):
        ts.load(tmp_path / "a", factory=build)
    ts.save(compressed(), tmp_path / "b")
    (tmp_path / "b" / "evil.py").write_text("print(1)")
    (tmp_path / "b" / "structure.json").unlink()
    with pytest.raises(UnsafeInputError) as e:
        ts.load(tmp_path / "b", factory=build)
    assert "structure.json: listed in the manifest but missing" in str(e.value)
    assert "evil.py: not listed in the manifest" in str(e.value)


def _rewrite(root: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and re-sign the manifest (an attacker who can write the folder)."""
    from torchslim.io import sha256_file

    (root / "model.safetensors").write_bytes(st_save(tensors))
    man = json.loads((root / "manifest.json").read_text())
    man["files"]["model.safetensors"] = sha256_file(root / "model.safetensors")
    (root / "manifest.json").write_text(json.dumps(man))


def test_nan_missing_extra_mismatch_all_listed(tmp_path):
    m = compressed()
    ts.save(m, tmp_path / "a")
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["0.weight"][0, 0, 0, 0] = float("nan")
    del sd["0.bias"]
    sd["4.weight"] = torch.zeros(3, 5, dtype=torch.bfloat16)
    sd["extra"] = torch.zeros(1)
    _rewrite(tmp_path / "a", sd)
    with pytest.raises(UnsafeInputError) as e:
        ts.load(tmp_path / "a", factory=build)
    msg = str(e.value)
    assert "0.weight: NaN or Inf" in msg and "0.bias: missing" in msg
    assert "4.weight: expected (3, 144)" in msg and "extra: unexpected tensor" in msg


def test_hostile_safetensors_bytes():
    good = st_save({"w": torch.ones(3)})
    import struct

    cases = {
        "truncated": good[:-3],
        "garbage": os.urandom(64),
        "trailing": good + b"\0\0",
        "200MB header": struct.pack("<Q", 200_000_000) + good[8:],
        "empty": b"",
    }
    for name, data in cases.items():
        with pytest.raises(UnsafeInputError):
            parse_safetensors(data, name)


def test_fuzz_loader_only_documented_error():
    rng = random.Random(0)
    seeds = [
        st_save({"w": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.int8)}),
        st_save({"x": torch.arange(10, dtype=torch.bfloat16)}, metadata={"k": "v"}),
    ]
    outcomes = {"ok": 0, "refused": 0}
    for i in range(10_000):
        data = bytearray(rng.choice(seeds))
        mode = i % 4
        if mode == 0:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif mode == 1:
            data = data[: rng.randrange(len(data))]
        elif mode == 2:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            data = bytearray(os.urandom(rng.randint(0, 96)))
        try:
            out = parse_safetensors(bytes(data), "fuzz")
            assert all(isinstance(t, torch.Tensor) for t in out.values())
            outcomes["ok"] += 1
        except UnsafeInputError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 5_000 and sum(outcomes.values()) == 10_000


def test_disk_full_keeps_old_artifact(tmp_path, monkeypatch):
    ts.save(build(), tmp_path / "a")
    before = (tmp_path / "a" / "model.safetensors").read_bytes()
    real = Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if self.name == "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputExistsError, match="no space left on the device"):
        ts.save(compressed(), tmp_path / "a", force=True)
    monkeypatch.undo()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    ts.load(tmp_path / "a", factory=build)


@pytest.mark.parametrize("when", ["after-weights", "before-rename"])
def test_kill_9_during_save(tmp_path, when):
    ts.save(build(), tmp_path / "a")
    before = (tmp_path / "a" / "manifest.json").read_bytes()
    hook = (
        "Path.write_text = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)"
        if when == "after-weights"
        else "os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)"
    )
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torchslim as ts
        from test_artifact import compressed
        m = compressed()
        {hook}
        ts.save(m, {str(tmp_path / "a")!r}, force=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO)
    assert proc.returncode == -9
    assert (tmp_path / "a" / "manifest.json").read_bytes() == before  # the old artifact is intact
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "a"]
    # Hidden, never the target: the temporary folder and the (released) writer lock file.
    assert leftovers and all(n.startswith((".torchslim-tmp-a-", ".torchslim-lock-a")) for n in leftovers)
    ts.load(tmp_path / "a", factory=build)
    ts.save(compressed(), tmp_path / "a", force=True)  # the next run cleans the stale temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert torch.equal(ts.load(tmp_path / "a", factory=build)(X), compressed()(X))
