"""Workload-shaped search spaces (``tune_space_overrides``, int8 embeddings beside int4) and ``tune``'s confirmation."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchslim.core import Context
from torchslim.recipes import builtin_recipes, run_recipe
from torchslim.tuning import SearchSpace, TuneOptions, tune
from torchslim.tuning.space import int4_config_type
from torchslim.workloads.digits import DigitsWorkload
from torchslim.workloads.minilm import MiniLMWorkload

tune_module = importlib.import_module("torchslim.tuning.tune")


class _Encoder(nn.Module):
    """A BERT-shaped toy: an embedding table and two blocks of two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(50, 64)
        self.layer = nn.ModuleList(
            nn.ModuleDict({"query": nn.Linear(64, 64), "out": nn.Linear(64, 64)}) for _ in range(2)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(ids)
        for block in self.layer:
            h = block["out"](block["query"](h))
        return h


def test_minilm_space_is_post_training_and_stores_embeddings_in_int8_beside_int4() -> None:
    overrides = MiniLMWorkload.tune_space_overrides(object.__new__(MiniLMWorkload))  # no model or data needed
    space = SearchSpace.for_model(_Encoder(), has_train_data=True, **overrides)
    assert space.recovery == ("none",) and space.max_drop_layers == 0 and "channels" not in space.prune_methods
    assert space.embeddings == ("fp32", "int8")
    if int4_config_type() is None:
        pytest.skip("int4 is not installed")
    int4 = space.point_of(builtin_recipes()["int4-g128"])
    assert int4 is not None and int4["embeddings"] == "fp32"  # the built-in keeps fp32 tables: an anchor
    smaller = [p for p in space.neighbours(int4)["compress"] if p.get("embeddings") == "int8"]
    assert smaller == [int4 | {"embeddings": "int8"}]  # one refinement step away
    point = int4 | {"embeddings": "int8", "int4_method": "rtn", "int4_group_size": 32}  # 64 inputs: groups of 32
    recipe = space.recipe(point)
    assert [s.config.kind for s in recipe.steps] == ["int4-weight-only", "int8-weight-only"]
    assert recipe.steps[1].select.types == ("Embedding",)
    assert space.point_of(recipe) == point
    model, _ = run_recipe(_Encoder(), recipe, Context(example_inputs=(torch.zeros(1, 4, dtype=torch.long),)))
    assert type(model.embeddings).__name__ == "Int8Embedding"
    assert type(model.layer[0]["query"]).__name__ != "Linear"
    # A uniform int8 point with fp32 tables turns the technique's embeddings off; with int8 it is the built-in.
    int8 = space.point_of(builtin_recipes()["int8-dynamic"])
    assert int8["embeddings"] == "int8"
    assert space.recipe(int8 | {"embeddings": "fp32"}).steps[0].config.embeddings is False


class _NarrowDigits(DigitsWorkload):
    def tune_space_overrides(self) -> dict:
        return {"prune_methods": ("none",), "recovery": ("none",), "quant": ("none", "bf16")}


def test_tune_merges_the_workload_overrides_into_the_default_space(tmp_path: Path) -> None:
    options = TuneOptions(max_drop=1.0, trials=1, out=tmp_path, latency_runs=1, builtins=(), progress=False)
    result = tune(_NarrowDigits(), options)
    space = result.study.user_attrs["settings"]["space"]
    assert space["quant"] == ["none", "bf16"] and space["recovery"] == ["none"] and space["prune_methods"] == ["none"]
    assert result.chosen["point"] == {"prune": "none", "quant": "bf16"}  # the bf16 built-in, the only anchor
    assert result.chosen["how"] == "no training step"  # confirmed without a rebuild


def test_reseeded_context_shuffles_the_training_data_differently() -> None:
    wl = DigitsWorkload()
    ctx = wl.context()
    same = next(iter(tune_module.fresh_context(wl, ctx).train_data()))[1]
    other = tune_module.reseeded_context(wl, ctx, 10_007)
    assert other.seed == 10_007 and not torch.equal(next(iter(other.train_data()))[1], same)


def test_confirmation_drops_a_trial_whose_rerun_misses_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two points that train (1 epoch of fine-tuning): the anchor-free space is fed by a fixed queue.
    space = SearchSpace(prune_methods=("channels",), channel_ratio=(0.125, 0.25, 0.125), channel_round_to=(1,),
                        recovery=("none", "finetune"), finetune_epochs=1, quant=("none",))  # fmt: skip
    real_run, calls = tune_module._Objective._run, []

    def run(self, steps, number, ctx=None, **kw):  # noqa: ANN001, ANN003, ANN202 - the first confirmation "misses"
        model, m = real_run(self, steps, number, ctx, **kw)
        if ctx is not None:
            calls.append(number)
            if len(calls) == 1:
                m = m | {"quality": m["quality"] - 5.0, "drop": m["drop"] + 5.0, "drop_bound": m["drop_bound"] + 5.0}
        return model, m

    monkeypatch.setattr(tune_module._Objective, "_run", run)
    real_tune_sampler = tune_module.make_sampler
    monkeypatch.setattr(
        tune_module, "make_sampler", lambda objective, seed, trials: real_tune_sampler(objective, seed, 10)
    )
    points = [{"prune": "channels", "channel_ratio": r, "recovery": "finetune", "quant": "none"} for r in (0.125, 0.25)]
    monkeypatch.setattr(SearchSpace, "named_anchors", lambda self, recipes=None: [("test", p) for p in points])
    options = TuneOptions(
        max_drop=1.0, trials=2, out=tmp_path, space=space, latency_runs=1, builtins=(), progress=False
    )
    result = tune("digits", options)
    trials = {t.params["channel_ratio"]: t.number for t in result.study.get_trials() if t.state.name == "COMPLETE"}
    assert calls == [trials[0.25], trials[0.125]]  # the smaller first, then the next one
    confirmations = result.study.user_attrs["confirmations"]
    assert confirmations[str(trials[0.25])]["confirmed"] is False
    assert result.chosen["number"] == trials[0.125] and result.chosen["confirmed"] is True
    c = result.chosen
    assert c["confirm_seed"] == tune_module.CONFIRM_SEED_OFFSET and c["mean_drop"] == pytest.approx(
        (c["drop"] + c["confirm_drop"]) / 2
    )
    # Judged with the margin: the bound averages drop + se over both runs (digits scores images one by one).
    confirm_bound = c["confirm_drop"] + c["confirm_drop_se"]
    assert c["drop_se"] > 0 and c["mean_bound"] == pytest.approx((c["drop_bound"] + confirm_bound) / 2)
    assert c["drop_bound"] == pytest.approx(c["drop"] + c["drop_se"])
    report = result.paths["report"].read_text()
    assert "## Confirmation" in report and "Confirmed: rebuilt with seed" in report
