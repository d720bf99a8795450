"""``torchslim compress --out`` / ``ts.save`` in a hostile environment: permission denied, read-only
and full file systems, two writers at once, Ctrl-C, and the user's umask.

Every case: exit 7 (OutputExistsError) with a one-line message naming the problem, and nothing left
behind but the previous state (no temporary folder, no lock file). The real full / read-only file
systems are small tmpfs mounts and need root with mount rights; elsewhere those tests skip and the
monkeypatched ones still run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.cli import main
from torchslim.errors import OutputExistsError
from torchslim.io.atomic import atomic_dir, atomic_file, describe_os_error, writer_lock

MODULE = """
import torch, torch.nn as nn
def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
def big():
    torch.manual_seed(0)
    return nn.Linear(256, 256)  # 256 KB of float32: more than the 64 KB tmpfs
def example_inputs():
    return (torch.randn(2, 16),)
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """``tmp_path`` as the current folder, holding ``hostilemod.py`` (a tiny factory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "hostilemod.py").write_text(MODULE, encoding="utf-8")
    monkeypatch.delitem(sys.modules, "hostilemod", raising=False)
    yield tmp_path
    sys.modules.pop("hostilemod", None)


def compress(out: Path | str, *extra: str) -> int:
    return main(
        [
            "compress",
            "--model",
            "hostilemod:build",
            "--recipe",
            "bf16",
            "--out",
            str(out),
            "--latency-runs",
            "1",
            *extra,
        ]
    )


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".torchslim-"))


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("torchslim: error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def tmpfs():
    """``tmpfs(size, read_only=False)``: a fresh tmpfs mount (root with mount rights; else the test skips)."""
    mounts = []

    def _mount(size: str = "64k", read_only: bool = False) -> Path:
        point = Path(tempfile.mkdtemp(prefix="torchslim-tmpfs-"))
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if r.returncode != 0:
            point.rmdir()
            pytest.skip(f"cannot mount a tmpfs here (needs root with mount rights): {r.stderr.strip()[:120]}")
        mounts.append(point)
        return point

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield _mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)
        point.rmdir()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
        (errno.EIO, "input/output error"),
    ],
)
def test_describe_os_error_names_the_problem(code, reason):
    assert describe_os_error(OSError(code, os.strerror(code))) == reason


# -- full disk ------------------------------------------------------------------------------------


def test_full_disk_is_exit_7_and_leaves_nothing(workdir, monkeypatch, capsys):
    real = Path.write_bytes

    def full(self, data):
        if self.name == "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert compress(workdir / "out") == 7
    line = one_line_error(capsys)
    assert "no space left on the device" in line and "out" in line
    assert not (workdir / "out").exists() and leftovers(workdir) == []


def test_full_tmpfs_is_exit_7_and_leaves_nothing(tmpfs):
    disk = tmpfs("64k")
    torch.manual_seed(0)
    with pytest.raises(OutputExistsError, match="no space left on the device"):
        ts.save(nn.Linear(256, 256), disk / "out", sparse=False)
    assert list(disk.iterdir()) == []


def test_full_tmpfs_keeps_the_previous_artifact(tmpfs):
    disk = tmpfs("96k")
    ts.save(model(), disk / "out")
    before = {p.name: p.read_bytes() for p in (disk / "out").iterdir()}
    torch.manual_seed(0)
    with pytest.raises(OutputExistsError, match="no space left on the device"):
        ts.save(nn.Linear(256, 256), disk / "out", sparse=False, force=True)
    assert {p.name: p.read_bytes() for p in (disk / "out").iterdir()} == before
    assert sorted(p.name for p in disk.iterdir()) == ["out"]


# -- read-only, permission denied -------------------------------------------------------------------


def test_read_only_file_system_is_exit_7(tmpfs, workdir, capsys):
    ro = tmpfs("64k", read_only=True)
    assert compress(ro / "out") == 7
    assert "read-only file system" in one_line_error(capsys)
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (the monkeypatched test covers it)")
def test_permission_denied_is_exit_7(workdir, capsys):
    """A real permission check: a folder without write permission."""
    parent = workdir / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert compress(parent / "out") == 7
        assert "permission denied" in one_line_error(capsys)
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    ],
)
def test_refused_writes_monkeypatched_are_exit_7(workdir, monkeypatch, capsys, error, message):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert compress(workdir / "out") == 7
    assert message in one_line_error(capsys)
    assert not (workdir / "out").exists() and leftovers(workdir) == []


# -- two writers -----------------------------------------------------------------------------------


def test_second_writer_while_the_first_writes_is_refused(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
        with pytest.raises(OutputExistsError, match="another process is writing it"):
            ts.save(model(), out, force=True)
        assert (tmp / "a.txt").exists()  # the second writer did not clean the first one's folder
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "manifest.json"]
    assert leftovers(tmp_path) == []


@pytest.mark.slow  # a second Python process (seconds)
def test_two_processes_one_wins_the_other_exits_7(workdir, capsys):
    """Process A holds ``out`` (writing slowly); ``torchslim compress --out`` meanwhile exits 7."""
    ready = workdir / "ready"
    code = textwrap.dedent(
        f"""
        import pathlib, time
        from torchslim.io.atomic import atomic_dir
        with atomic_dir({str(workdir / "out")!r}) as tmp:
            (tmp / "from-a.txt").write_text("a")
            pathlib.Path({str(ready)!r}).touch()
            while not pathlib.Path({str(workdir / "go")!r}).exists():  # hold the folder until told to finish
                time.sleep(0.05)
        """
    )
    a = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert a.poll() is None and time.monotonic() < deadline, "writer A did not start"
            time.sleep(0.05)
        assert compress(workdir / "out", "--force") == 7
        assert "another process is writing it" in one_line_error(capsys)
    finally:
        (workdir / "go").touch()
        assert a.wait(timeout=120) == 0
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["from-a.txt", "manifest.json"]
    assert leftovers(workdir) == []


def test_stale_lock_file_of_a_killed_writer_does_not_block(tmp_path):
    (tmp_path / ".torchslim-lock-out").write_text("")  # a SIGKILLed writer's lock file: no flock held
    ts.save(model(), tmp_path / "out")
    assert leftovers(tmp_path) == []


# -- Ctrl-C ------------------------------------------------------------------------------------------


def test_ctrl_c_during_save_is_exit_130_and_leaves_nothing(workdir, monkeypatch, capsys):
    import torchslim.io.artifact as artifact

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "_read_tensors", interrupted)  # the verification step, files already written
    assert compress(workdir / "out") == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (workdir / "out").exists() and leftovers(workdir) == []


@pytest.mark.slow  # a second Python process (seconds)
def test_real_sigint_during_compress_is_exit_130_and_leaves_nothing(workdir):
    """A real SIGINT to ``torchslim compress --out`` while it writes: exit 130, no temporary folder or lock."""
    ready = workdir / "ready"
    code = textwrap.dedent(
        f"""
        import pathlib, signal, sys, time
        import torchslim.io.artifact as artifact
        from torchslim.cli import main

        # As in a terminal: Python leaves SIGINT ignored when its parent ignored it (a test runner may).
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def stalled(path):  # the files are written, the verification has not run yet
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(120)

        artifact._read_tensors = stalled
        sys.exit(main(["compress", "--model", "hostilemod:build", "--recipe", "bf16", "--out", "out", "--latency-runs", "1"]))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=workdir, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "compress did not reach the write"
        time.sleep(0.05)
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".torchslim-tmp-"))  # mid-write
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "torchslim: interrupted" in err
    assert not (workdir / "out").exists() and leftovers(workdir) == []


def test_out_on_another_file_system(tmpfs, workdir):
    other = tmpfs("1m")
    ts.save(model(), other / "out")
    assert torch.equal(ts.load(other / "out", factory=model).state_dict()["0.weight"], model().state_dict()["0.weight"])
    assert sorted(p.name for p in other.iterdir()) == ["out"]


def test_ctrl_c_keeps_the_previous_artifact(tmp_path, monkeypatch):
    import torchslim.io.artifact as artifact

    ts.save(model(), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    monkeypatch.setattr(artifact, "_read_tensors", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        ts.save(nn.Linear(3, 3), tmp_path / "out", force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert leftovers(tmp_path) == []


# -- umask -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("umask", "folder", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)]
)
def test_artifact_follows_the_umask(tmp_path, umask, folder, file):
    old = os.umask(umask)
    try:
        ts.save(model(), tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == folder
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == dict.fromkeys(
        ["manifest.json", "model.safetensors", "structure.json"], file
    )


# -- one output file: `torchslim export --out FILE` and atomic_file ------------------------------------


def export(art: Path, out: Path) -> int:
    return main(["export", str(art), "--model", "hostilemod:build", "--format", "pt2", "--out", str(out)])


def test_export_while_another_writer_holds_the_file_exits_7(workdir, capsys, monkeypatch):
    """A held writer lock on ``model.pt2`` (the one ``atomic_dir`` takes): export exits 7 at once, before
    loading anything, and the previous file is left as it was."""
    ts.save(model(), workdir / "art")
    out = workdir / "model.pt2"
    out.write_bytes(b"previous")
    import torchslim.io as tio

    monkeypatch.setattr(tio, "load", lambda *a, **k: pytest.fail("export loaded the artifact without the lock"))
    with writer_lock(out):
        assert export(workdir / "art", out) == 7
        assert "another process is writing it" in one_line_error(capsys)
    assert out.read_bytes() == b"previous"
    assert leftovers(workdir) == []


@pytest.mark.slow  # a real export (seconds) and a second Python process
def test_two_exports_of_one_file_one_wins_the_other_exits_7(workdir, capsys):
    """Process A exports to ``model.pt2`` and holds it; a second ``torchslim export`` meanwhile exits 7; A's
    file is complete and alone."""
    ts.save(model(), workdir / "art")
    out, ready, go = workdir / "model.pt2", workdir / "ready", workdir / "go"
    code = textwrap.dedent(
        f"""
        import pathlib, sys, time
        import torchslim.export.formats as formats
        from torchslim.cli import main
        real = formats.export_pt2
        def slow(*args, **kwargs):  # hold the file until told to finish, then export for real
            pathlib.Path({str(ready)!r}).touch()
            while not pathlib.Path({str(go)!r}).exists():
                time.sleep(0.05)
            return real(*args, **kwargs)
        import torchslim.export
        torchslim.export.export_pt2 = slow
        sys.exit(main(["export", "art", "--model", "hostilemod:build", "--format", "pt2", "--out", "model.pt2"]))
        """
    )
    a = subprocess.Popen([sys.executable, "-c", code], cwd=workdir)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert a.poll() is None and time.monotonic() < deadline, "export A did not start"
            time.sleep(0.05)
        assert export(workdir / "art", out) == 7
        assert "another process is writing it" in one_line_error(capsys)
        assert not out.exists()
    finally:
        go.touch()
        assert a.wait(timeout=300) == 0
    loaded = torch.export.load(str(out)).module()
    x = torch.randn(2, 16)
    assert torch.allclose(loaded(x), model()(x), atol=1e-6)
    assert leftovers(workdir) == []


def test_export_holds_the_lock_for_its_run_only(workdir, monkeypatch):
    # While the export runs its file is locked; afterwards the next export of the same file works.
    ts.save(model(), workdir / "art")
    out = workdir / "sub" / "model.pt2"
    import torchslim.export as texport

    def fake_export(m, example, path):  # the write path itself: tests/io/test_export.py and tests/crash
        with pytest.raises(OutputExistsError, match="another process is writing it"):
            with writer_lock(path):
                pass
        Path(path).write_bytes(b"graph")
        return 0.0

    monkeypatch.setattr(texport, "export_pt2", fake_export)
    assert export(workdir / "art", out) == 0
    assert export(workdir / "art", out) == 0
    with writer_lock(out):
        pass
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt2"]


def test_full_disk_in_atomic_file_is_exit_7_and_keeps_the_previous_file(tmp_path, monkeypatch):
    """A write that fails with ENOSPC half-way: OutputExistsError (exit 7) naming it, the previous file
    byte for byte, no temporary left."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous complete file")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputExistsError, match="no space left on the device") as info:
        with atomic_file(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new ")
                f.flush()
                monkeypatch.setattr(os, "write", full)
                os.write(f.fileno(), b"file")
    monkeypatch.undo()
    assert info.value.exit_code == 7
    assert target.read_bytes() == b"previous complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_full_disk_at_fsync_in_atomic_file_is_exit_7(tmp_path, monkeypatch):
    # The bytes reach the disk at fsync (delayed allocation): ENOSPC there is the same refusal.
    target = tmp_path / "model.pt2"
    target.write_bytes(b"previous")
    import torchslim.io.atomic as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OutputExistsError, match="writing .*model.pt2 failed: no space left on the device"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"new")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]
