"""tune on a user's workload whose data are DataLoaders: of (x, y) pairs, and of dicts (keyword inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.tuning import TuneOptions, tune
from torchslim.workloads import Workload


class KeywordNet(nn.Module):
    """A keyword-input classifier, called as ``model(input_ids=..., attention_mask=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return self.fc2(torch.relu(self.fc1(h.mean(1))))


class DictRows(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "pairs":
        return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    return KeywordNet()


class LoaderWorkload(Workload):
    """Labels are the model's own predictions, so the baseline is exact and a drop is measurable."""

    metric = "accuracy"

    def __init__(self, kind: str) -> None:
        self.kind, self.name = kind, f"user-{kind}"
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 12, generator=g) if kind == "pairs" else torch.randint(0, 50, (96, 10), generator=g)
        with torch.no_grad():
            model = self.model()
            y = (model(x) if kind == "pairs" else model(input_ids=x)).argmax(-1)
        ds = TensorDataset(x, y) if kind == "pairs" else DictRows(x, y)
        self.loaders = {
            "train": DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1)),
            "val": DataLoader(ds, batch_size=32),
            "test": DataLoader(ds, batch_size=32),
        }

    def model(self) -> nn.Module:
        return _build(self.kind).eval()

    def factory(self) -> nn.Module:
        return _build(self.kind)

    def example_inputs(self):
        batch = next(iter(self.loaders["test"]))
        return (batch[0][:4],) if self.kind == "pairs" else {"input_ids": batch["input_ids"][:4]}

    def calibration(self, n_batches: int = 8):
        return self.loaders["train"]

    def train_data(self):
        return self.loaders["train"]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        model.eval()
        hits = []
        for batch in self.loaders[split]:
            if self.kind == "pairs":
                out, y = model(batch[0]), batch[1]
            else:
                out, y = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"]
            hits.append((out.argmax(-1) == y).float())
        return {"accuracy": torch.cat(hits).mean().item()}


@pytest.mark.parametrize("kind", ["pairs", "dicts"])
def test_tune_runs_on_dataloader_workloads(tmp_path: Path, kind: str) -> None:
    result = tune(
        LoaderWorkload(kind),
        TuneOptions(
            max_drop=0.05,
            trials=3,
            out=tmp_path / "t",
            latency_runs=2,
            builtins=(),
            confirm=0,
            progress=False,
        ),
    )
    assert result.completed == 3
    states = [t.state.name for t in result.study.get_trials()]
    assert states.count("COMPLETE") + states.count("PRUNED") == 3
    # The anchors include GPTQ int4, which calibrates on the workload's DataLoader (pairs: targets dropped;
    # dicts: keyword inputs, labels dropped).
    gptq = [t for t in result.study.get_trials() if t.params.get("int4_method") == "gptq"]
    assert gptq and all(t.state.name == "COMPLETE" for t in gptq)
