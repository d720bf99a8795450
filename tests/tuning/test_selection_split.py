"""Selection splits: ``sensitivity`` (and ``tune``'s budget) evaluate on the workload's ``selection_split``.

``fsdd-kws`` has no ``val`` split (FSDD's official split is train/test): ``sensitivity --workload
fsdd-kws`` used to end in ``ValueError: unknown split 'val'``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchslim.cli import main
from torchslim.workloads import fsdd, get_workload

DATA = (Path(__file__).resolve().parents[2] / "../shared/data/fsdd/recordings").resolve()
needs_fsdd = pytest.mark.skipif(not (DATA / "0_jackson_0.wav").is_file(), reason=f"FSDD not found at {DATA}")


def _link(root: Path, speakers: dict[str, tuple[int, ...]]) -> Path:
    root.mkdir()
    for digit in range(10):
        for speaker, takes in speakers.items():
            for take in takes:
                name = f"{digit}_{speaker}_{take}.wav"
                (root / name).symlink_to(DATA / name)
    return root


@needs_fsdd
def test_fsdd_selects_on_the_held_out_speaker_else_test(tmp_path):
    with_speaker = _link(tmp_path / "a", {"jackson": (0, 5), "yweweler": (0,)})
    without = _link(tmp_path / "b", {"jackson": (0, 5)})
    assert get_workload("fsdd-kws", with_speaker).selection_split == "speaker_out"
    assert get_workload("fsdd-kws", without).selection_split == "test"
    assert get_workload("digits").selection_split == "val"


@needs_fsdd
def test_sensitivity_on_fsdd_uses_its_selection_split(tmp_path, monkeypatch, capsys):
    """Was: ``ValueError: unknown split 'val'; use one of train, test, speaker_out`` (a traceback)."""
    folder = _link(tmp_path / "fsdd", {"jackson": (0, 5, 6), "theo": (1, 7, 8), "yweweler": (0, 9)})
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fsdd, "_TEACHER_EPOCHS", 1)  # part of the cache key: never mixes with the real teacher
    out = tmp_path / "sens"
    argv = ["sensitivity", "--workload", "fsdd-kws", "--data", str(folder), "--methods", "prune", "--ratio", "0.9"]
    assert main([*argv, "--granularity", "block", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "sensitivity.json").read_text())
    assert result["split"] == "speaker_out" and result["rows"]
    assert all(isinstance(r["prune-0.9"], float) for r in result["rows"])
    assert "speaker_out split" in capsys.readouterr().out


def test_budget_defaults_to_the_selection_split():
    import torch.nn as nn

    from torchslim.tuning.budget import Budget

    class Held:
        metric, higher_is_better, selection_split = "accuracy", True, "held"
        seen: list[str] = []

        def evaluate(self, model, split):
            self.seen.append(split)
            return {"accuracy": 1.0}

    wl = Held()
    budget = Budget(wl, nn.Linear(2, 2), max_drop=0.1, margin=0.0)
    assert budget.split == "held" and wl.seen == ["held"]
