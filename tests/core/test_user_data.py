"""Data as users hold it (issue #20, item 2): DataLoaders of ``(x, y)`` and of dicts, generators,
``input_fn`` and keyword-input models, in calibration, fine-tuning, distillation and measurement;
and ``Context(device=...)`` refused when the device is not available (item 6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim as ts
from torchslim.core.batches import ModelInputs, call_model, model_inputs, split_inputs_target
from torchslim.core.context import Context
from torchslim.distillation import DistillConfig
from torchslim.errors import ConfigError
from torchslim.measure.latency import measure_latency
from torchslim.measure.macs import count_macs
from torchslim.training import fit_

VOCAB, SEQ, CLASSES = 50, 6, 3


def _xy(n: int = 32, features: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES))


def _loader(shuffle: bool = False) -> DataLoader:
    """A DataLoader of TensorDataset(X, Y): every batch is the list [x, y]."""
    return DataLoader(TensorDataset(*_xy()), batch_size=8, shuffle=shuffle)


class KeywordModel(nn.Module):
    """A tiny text classifier called like a Hugging Face model: ``model(input_ids=..., attention_mask=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.hidden = nn.Linear(32, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head(torch.relu(self.hidden(h)).mean(dim=1))


def _dict_loader(n: int = 24) -> DataLoader:
    """A DataLoader of tokenizer-like dicts with labels (what a Hugging Face collator yields)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    rows = [
        {"input_ids": ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels[i]}
        for i in range(n)
    ]
    return DataLoader(rows, batch_size=8)


def _sparsity(linear: nn.Linear) -> float:
    return float((linear.weight == 0).float().mean())


# --- calibration with DataLoader(TensorDataset(X, Y)) ------------------------------------------


def test_wanda_calibrates_on_a_dataloader_of_inputs_and_targets() -> None:
    model = _mlp()
    ts.compress_(model, ts.WandaPruning(sparsity=0.5), ctx=Context(calibration=_loader()))
    assert _sparsity(model[0]) == pytest.approx(0.5, abs=0.02)


def test_int8_static_calibrates_on_a_dataloader_of_inputs_and_targets() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, CLASSES))
    x = torch.randn(16, 3, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.randint(0, CLASSES, (16,))), batch_size=8)
    ref = model(x)
    ts.compress_(model, ts.Int8Static(), ctx=Context(calibration=loader))
    assert type(model[0]) is not nn.Conv2d  # swapped for the int8 module
    assert torch.nn.functional.cosine_similarity(model(x).flatten(), ref.flatten(), dim=0) > 0.99


def test_gptq_calibrates_on_a_dataloader_of_inputs_and_targets() -> None:
    model = _mlp()
    x, _ = _xy()
    ref = model(x)
    ts.compress_(model, ts.Int4WeightOnly(group_size=32, method="gptq"), ctx=Context(calibration=_loader()))
    assert not isinstance(model[0], nn.Linear)
    assert torch.nn.functional.cosine_similarity(model(x).flatten(), ref.flatten(), dim=0) > 0.98


def test_a_generator_is_read_once_and_every_gptq_pass_sees_the_same_batches() -> None:
    x, _ = _xy()
    batches = [x[:16], x[16:]]
    ctx = Context(calibration=(b for b in batches))
    assert isinstance(ctx.calibration, list) and len(ctx.calibration) == 2
    a, b = _mlp(), _mlp()
    ts.compress_(a, ts.Int4WeightOnly(group_size=32, method="gptq"), ctx=ctx)
    ts.compress_(b, ts.Int4WeightOnly(group_size=32, method="gptq"), ctx=Context(calibration=batches))
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_a_shuffled_dataloader_is_read_once_into_fixed_batches() -> None:
    ctx = Context(calibration=_loader(shuffle=True))
    first = [b[0].clone() for b in ctx.calibration]
    assert all(torch.equal(f, b[0]) for f, b in zip(first, ctx.calibration, strict=True))


# --- keyword-input (Hugging Face style) models -------------------------------------------------


def test_keyword_model_calibrates_on_a_dataloader_of_dicts_with_labels() -> None:
    model = KeywordModel()
    ts.compress_(model, ts.WandaPruning(sparsity=0.5), ctx=Context(calibration=_dict_loader()))
    assert _sparsity(model.hidden) == pytest.approx(0.5, abs=0.02)


def test_keyword_model_calibrates_on_batch_encodings() -> None:
    transformers = pytest.importorskip("transformers")
    batch = next(iter(_dict_loader()))
    encoding = transformers.BatchEncoding({k: v for k, v in batch.items() if k != "labels"})
    model = KeywordModel()
    ts.compress_(model, ts.WandaPruning(sparsity=0.5), ctx=Context(calibration=[encoding, encoding]))
    assert _sparsity(model.hidden) == pytest.approx(0.5, abs=0.02)


def test_keyword_model_fine_tunes_and_distils_on_a_dataloader_of_dicts() -> None:
    teacher, student = KeywordModel(), KeywordModel()
    batch = next(iter(_dict_loader()))
    before = student(batch["input_ids"], batch["attention_mask"]).detach()
    ctx = Context(train_data=_dict_loader(), teacher=teacher)
    ts.compress_(student, DistillConfig(epochs=1, lr=1e-2), ctx=ctx)
    after = student(batch["input_ids"], batch["attention_mask"]).detach()
    assert not torch.equal(before, after)
    fit_(student, _dict_loader(), epochs=1, progress=False)  # the labels key is the target


def test_keyword_model_measures_with_dict_example_inputs() -> None:
    batch = next(iter(_dict_loader()))
    example = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model = KeywordModel()
    assert count_macs(model, example) == count_macs(model, (example["input_ids"], example["attention_mask"]))
    assert count_macs(model, example, per_sample=True) * 8 == count_macs(model, example)
    assert measure_latency(model, example, warmup=1, runs=2).runs == 2


# --- training data as a DataLoader; one-shot generators refused --------------------------------


def test_gradual_pruning_fine_tunes_on_a_dataloader() -> None:
    model = _mlp()
    cfg = ts.GradualPruning(final_sparsity=0.5, steps=1, epochs_per_step=1, final_epochs=1)
    ts.compress_(model, cfg, ctx=Context(train_data=_loader(shuffle=True)))
    assert _sparsity(model[0]) == pytest.approx(0.5, abs=0.02)


def test_distillation_trains_on_a_dataloader_of_inputs_and_targets() -> None:
    teacher, student = _mlp(), nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    w = student[0].weight.detach().clone()
    ts.compress_(student, DistillConfig(epochs=1, lr=1e-2), ctx=Context(train_data=_loader(), teacher=teacher))
    assert not torch.equal(w, student[0].weight)


def test_a_generator_as_train_data_is_refused() -> None:
    with pytest.raises(ConfigError, match="one-shot generator.*DataLoader.*callable"):
        Context(train_data=(b for b in _loader()))


def test_a_dataset_of_samples_is_refused_with_the_dataloader_hint() -> None:
    with pytest.raises(ConfigError, match="DataLoader"):
        Context(train_data=TensorDataset(*_xy()))
    with pytest.raises(ConfigError, match="DataLoader"):
        Context(calibration=TensorDataset(*_xy()))


# --- input_fn ----------------------------------------------------------------------------------


def test_input_fn_maps_any_layout_in_calibration_and_training() -> None:
    x, y = _xy()
    batches = [{"target": y[i : i + 8], "features": x[i : i + 8]} for i in range(0, 32, 8)]
    ctx = Context(
        calibration=batches,
        train_data=batches,
        input_fn=lambda b: ((b["features"],), {}, b["target"]),
    )
    model = _mlp()
    ts.compress_(model, ts.WandaPruning(sparsity=0.5), ctx=ctx)
    assert _sparsity(model[0]) == pytest.approx(0.5, abs=0.02)
    w = model[2].weight.detach().clone()
    ts.compress_(model, ts.FineTune(epochs=1), ctx=ctx)
    assert not torch.equal(w, model[2].weight)


def test_input_fn_is_applied_once_when_the_context_is_copied() -> None:
    import dataclasses

    calls = []

    def input_fn(batch):
        calls.append(batch)
        return (batch[1],), {}, batch[0]

    x, y = _xy(8)
    ctx = dataclasses.replace(Context(calibration=[(y, x)], train_data=[(y, x)], input_fn=input_fn), seed=1)
    assert len(calls) == 1 and isinstance(ctx.calibration[0], ModelInputs)
    fit_(_mlp(), ctx.train_data, epochs=1, progress=False)
    assert len(calls) == 2  # one training batch, mapped once


def test_a_batch_forward_cannot_take_names_the_batch_and_suggests_input_fn() -> None:
    class TwoInputs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    with pytest.raises(ConfigError, match=r"forward\(a, b\) cannot take a Tensor.*input_fn"):
        call_model(TwoInputs(), torch.zeros(2, 3))


# --- the batch rules ---------------------------------------------------------------------------


def test_forward_signature_decides_which_items_are_targets() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])

    class XMask(nn.Module):
        def forward(self, x, mask):
            return x

    class Star(nn.Module):
        def forward(self, *args):
            return args

    assert model_inputs(nn.Identity(), [x, y]).args == (x,)
    assert len(model_inputs(XMask(), (x, x, y)).args) == 2
    assert len(model_inputs(Star(), (x, x, y)).args) == 3
    assert model_inputs(nn.Identity(), ((x,), y)).args == (x,)
    assert sorted(model_inputs(nn.Identity(), ({"a": x, "labels": y}, y)).kwargs) == ["a"]


def test_training_split_takes_the_last_item_or_the_labels_key_as_target() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert split_inputs_target([x, y])[1] is y
    assert split_inputs_target((x,))[1] is None
    inputs, target = split_inputs_target(({"a": x}, y))
    assert sorted(inputs) == ["a"] and target is y
    assert split_inputs_target({"a": x, "label": y})[1] is y


# --- device ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cuda_is_refused_on_a_machine_without_it() -> None:
    with pytest.raises(ConfigError, match="device 'cuda' is not available here"):
        Context(device="cuda")


def test_unknown_device_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        Context(device="gpu0")
    assert Context(device=torch.device("cpu")).device == "cpu"
