"""An artifact that names a Python factory is not trusted to run it: ts.load imports nothing unless asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.cli import main
from torchslim.errors import UnsafeInputError


def _artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "untrusted_models.py").write_text(
        "import torch.nn as nn\n\n\ndef build():\n    return nn.Linear(4, 2)\n\n\ndef example_inputs():\n"
        "    import torch\n    return (torch.zeros(3, 4),)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    ts.save(nn.Linear(4, 2), tmp_path / "a", source="untrusted_models:build")
    sys.modules.pop("untrusted_models", None)
    return tmp_path / "a"


def test_recorded_factory_is_not_imported_without_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _artifact(tmp_path, monkeypatch)
    with pytest.raises(UnsafeInputError, match="names the Python factory 'untrusted_models:build'"):
        ts.load(path)
    assert "untrusted_models" not in sys.modules  # nothing the file names was imported
    assert isinstance(ts.load(path, trust_factory=True), nn.Linear)


def test_a_crafted_record_naming_any_callable_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _artifact(tmp_path, monkeypatch)
    structure = json.loads((path / "structure.json").read_text())
    structure["rebuild"] = {"kind": "factory", "factory": "os:getpid"}
    (path / "structure.json").write_text(json.dumps(structure))
    # The checksum catches this edit; an attacker writes a matching manifest, so check the rebuild step itself.
    from torchslim.io.source import rebuild_model

    with pytest.raises(UnsafeInputError, match="os:getpid"):
        rebuild_model(structure["rebuild"], path, lambda p: json.loads(p.read_text()))


def test_cli_export_asks_for_the_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    path = _artifact(tmp_path, monkeypatch)
    assert main(["export", str(path), "--format", "pt2"]) == 4
    assert "--model untrusted_models:build" in capsys.readouterr().err
    assert main(["export", str(path), "--model", "untrusted_models:build", "--format", "pt2"]) == 0
