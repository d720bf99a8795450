"""The digits-kd benchmark's rows and schema (tiny training budget; the real run is `torchslim bench digits-kd`)."""

from __future__ import annotations

import pytest

from torchslim.bench import BENCHMARKS, digits_kd


def test_digits_kd_rows(monkeypatch) -> None:
    monkeypatch.setattr(digits_kd, "LABELS", digits_kd.LABELS.replace(epochs=1))
    monkeypatch.setattr(digits_kd, "KD", digits_kd.KD.replace(epochs=1))
    result = digits_kd.bench(quick=True, seeds=(0, 1))
    rows = {r["variant"]: r for r in result.to_dict()["rows"]}
    assert list(rows) == ["fp32", "torchslim-student-labels", "torchslim-student-kd"]
    assert rows["fp32"]["quality"]["accuracy"] > 0.95  # the cached teacher
    for name in ("torchslim-student-labels", "torchslim-student-kd"):
        q = rows[name]["quality"]
        assert set(q) == {"accuracy", "accuracy_std", "errors", "val_accuracy"}
        assert q["errors"] == pytest.approx((1 - q["accuracy"]) * 360, abs=0.5)
        assert rows[name]["params"] < rows["fp32"]["params"] / 10
    assert any("target (gain > std)" in n for n in result.notes)
    assert BENCHMARKS["digits-kd"] == "torchslim.bench.digits_kd:bench"


class _FakeSTS:
    """rows() and tokenize() of the minilm-stsb workload, on made-up sentences (no model, no files)."""

    def rows(self, split: str):
        assert split == "train"  # the student learns from the train split's sentences only
        return [(1.0, f"a {'x ' * i}", f"b {'y ' * (i % 7)}") for i in range(100)]

    def tokenize(self, sentences):
        import torch

        n = max(len(s.split()) for s in sentences)
        mask = torch.tensor([[1] * len(s.split()) + [0] * (n - len(s.split())) for s in sentences])
        return {"input_ids": mask.clone(), "attention_mask": mask}


def test_minilm_kd_sentence_batches_cover_every_sentence_once_per_epoch() -> None:
    from torchslim.bench.minilm_kd import train_sentences

    data = train_sentences(_FakeSTS(), seed=0, batch=8)
    first, second = list(data()), list(data())
    assert len(first) == len(data()) == 14  # 107 unique sentences (the b-sentences repeat) in batches of 8
    seen = sorted(int(b[0]["attention_mask"][r].sum()) for b in first for r in range(len(b[0]["attention_mask"])))
    assert len(seen) == 107 and all(len(b) == 1 for b in first)  # 1-tuples: no labels
    assert [b[0]["input_ids"].shape for b in first] != [b[0]["input_ids"].shape for b in second]
