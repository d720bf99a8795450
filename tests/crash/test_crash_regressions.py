"""Regression tests of what the kill harness and its review found (RELIABILITY.md, "Kill harness").

Each kill is made deterministic here: a child process is SIGKILLed by itself at the exact moment that
used to leave something behind.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchslim.distillation import DistillConfig, train_distill
from torchslim.distillation.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from torchslim.errors import UnsupportedModelError
from torchslim.export import formats
from torchslim.io.atomic import atomic_file


def _killed_mid_write(script: str, cwd: Path) -> None:
    """Run ``script`` in a child that SIGKILLs itself half-way through a write; assert it died so."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]


def test_checkpoint_killed_mid_write_leaves_no_visible_file_and_the_next_save_cleans_up(tmp_path):
    """Was: ``distill-checkpoint.pt.<random>.tmp`` (mkstemp) stayed in the checkpoint folder for good."""
    save_checkpoint(tmp_path, {"step": 1, "fingerprint": {}})
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    _killed_mid_write(
        """
        import os, signal, torch
        from torchslim.distillation.checkpoint import save_checkpoint

        def half_then_die(obj, path):
            with open(path, "wb") as f:
                f.write(b"PK\\x03\\x04 half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_then_die
        save_checkpoint(".", {"step": 2, "fingerprint": {}})
        """,
        tmp_path,
    )
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before  # the previous checkpoint, intact
    assert all(p.name.startswith(".torchslim-") for p in tmp_path.iterdir() if p.name != CHECKPOINT_NAME)
    assert any(p.name.startswith(".torchslim-tmp-") for p in tmp_path.iterdir())  # the killed one's, hidden
    save_checkpoint(tmp_path, {"step": 3, "fingerprint": {}})
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    assert load_checkpoint(tmp_path, {})["step"] == 3


def test_atomic_file_keeps_a_live_writers_temporary(tmp_path):
    """A stale temporary is removed only when no process holds its lock (its writer is dead)."""
    live = tmp_path / ".torchslim-tmp-a.bin-live.bin"
    live.write_bytes(b"being written")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with atomic_file(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"one")
        assert live.exists()
    finally:
        os.close(fd)
    with atomic_file(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"two"


def test_atomic_file_follows_the_umask(tmp_path):
    """Was: exported graphs and checkpoints were 0600 whatever the umask (mkstemp's mode)."""
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o644


def test_safetensors_written_through_atomic_writes_follow_the_umask(tmp_path):
    """Was: ``distill --out``'s ``model.safetensors`` was 0600 whatever the umask (safetensors' ``save_file``
    forces it), unlike the rest of the artifact."""
    from safetensors.torch import save_file

    from torchslim.io.atomic import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        with atomic_file(tmp_path / "cache.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "cache.safetensors").stat().st_mode & 0o777 == 0o644


def test_export_failing_its_check_keeps_the_previous_file(tmp_path, monkeypatch):
    """Was: the exported file replaced the previous one before it was verified, so a failed check (or a
    kill during the check) left an unverified file where the verified one had been."""
    path = tmp_path / "model.pt2"
    path.write_bytes(b"the previous, verified export")

    def wrong(*args, **kwargs):
        raise UnsupportedModelError("the reloaded .pt2 output 0 differs from the model")

    monkeypatch.setattr(formats, "_verify", wrong)
    with pytest.raises(UnsupportedModelError, match="differs"):
        formats.export_pt2(nn.Linear(4, 2), (torch.randn(2, 4),), path)
    assert path.read_bytes() == b"the previous, verified export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]


def test_export_killed_while_verifying_leaves_the_previous_file_and_the_next_export_cleans_up(tmp_path):
    """A SIGKILL between writing and verifying: before, the unverified file was already in place and a
    hidden ``.model.pt2-*`` temporary of an earlier kill was never removed."""
    path = tmp_path / "model.pt2"
    path.write_bytes(b"previous")
    _killed_mid_write(
        """
        import os, signal, torch, torch.nn as nn
        from torchslim.export import formats

        formats._verify = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        formats.export_pt2(nn.Linear(4, 2), (torch.randn(2, 4),), "model.pt2")
        """,
        tmp_path,
    )
    assert path.read_bytes() == b"previous"
    assert all(p.name.startswith(".torchslim-") for p in tmp_path.iterdir() if p.name != "model.pt2")
    formats.export_pt2(nn.Linear(4, 2), (torch.randn(2, 4),), path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]
    torch.export.load(str(path))  # a complete program


class _Killed(Exception):
    """Stands for a SIGKILL: nothing is checkpointed on the way out (unlike Ctrl-C)."""


def test_distill_resume_is_bit_identical_when_the_data_shuffle_draws_from_the_global_generator(tmp_path):
    """Was: a ``DataLoader(shuffle=True)`` without its own generator shared torch's global generator with
    dropout; on resume, the epochs read again before the checkpoint drew from the restored state, so the
    shuffle (and the final student) differed from the uninterrupted run's."""
    x = torch.randn(48, 6, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(1))

    def data(die_at: int | None = None):
        """The training data: a shuffling DataLoader per epoch (6 batches); ``die_at``: the batch that kills."""
        read = [0]

        def epoch():
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
            for batch in loader:
                if read[0] == die_at:
                    raise _Killed
                read[0] += 1
                yield batch

        return epoch

    def student() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))

    teacher, config = nn.Linear(6, 3), DistillConfig(epochs=3, checkpoint_every=4, lr=0.01)
    whole = train_distill(student(), teacher, data(), config, checkpoint_dir=str(tmp_path / "a"), progress=False)
    with pytest.raises(_Killed):
        train_distill(student(), teacher, data(die_at=15), config, checkpoint_dir=str(tmp_path / "b"), progress=False)
    saved = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 8  # the last checkpoint before the kill, in epoch 2: 8 batches are read again
    resumed = train_distill(student(), teacher, data(), config, checkpoint_dir=str(tmp_path / "b"), progress=False)
    assert resumed.history[0]["step"] == 1 and resumed.steps == whole.steps == 18
    for (name, a), b in zip(whole.student.state_dict().items(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
