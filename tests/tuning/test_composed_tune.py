"""``tune --space composed`` (issue #21): the composed space on a tiny 6-block BERT workload with the
minilm-stsb interface (a handful of sentences, one distillation batch per epoch)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState

from torchslim.api import compress_
from torchslim.core.context import Context
from torchslim.errors import ConfigError
from torchslim.recipes import builtin_recipes, load_recipe, recipe_from_dict
from torchslim.tuning.composed import EDGE_INT8, ComposedSpace, DistillMonitor
from torchslim.tuning.moves import point_key
from torchslim.tuning.options import TuneOptions
from torchslim.tuning.tune import STUDY_NAME, tune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from tiny_bert import bert_encoder  # noqa: E402
from tiny_sts import SMALL_COMPOSED as SMALL  # noqa: E402
from tiny_sts import TinyStsWorkload, tiny_bert_encoder, write_sts  # noqa: E402


def _space() -> ComposedSpace:
    return ComposedSpace.for_model(tiny_bert_encoder(), **SMALL)


def _tune(tmp_path: Path, trials: int, **kw) -> object:
    wl = TinyStsWorkload(write_sts(tmp_path / "sts"))
    kw = {"max_drop": 100.0, "space": _space(), "composed": True, "builtins": (), "confirm": 0, "latency_runs": 1,
          "progress": False} | kw  # fmt: skip
    return tune(wl, TuneOptions(out=tmp_path / "out", trials=trials, **kw))


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")


def test_builtin_minilm_edge_is_the_first_anchor_and_its_recipe_comes_back_exactly():
    # hidden 64: the recipe's int4 rows in groups of 64 fit every table of this encoder
    wide = bert_encoder(300, 64, 6, 4, 128, max_len=64, pooler=False)
    space = ComposedSpace.for_model(wide, recipes=builtin_recipes().values())
    (origin, point), *rest = space.named_anchors()
    assert origin == "builtin:minilm-edge"
    edge = builtin_recipes()["minilm-edge"]
    assert [s.to_dict() for s in space.recipe(point).steps] == [s.to_dict() for s in edge.steps]
    assert point["keep_blocks"] == "0,3,5" and point["embeddings"] == "factorized-256-int4"
    assert (point["depth_epochs"], point["width_epochs"], point["embed_epochs"]) == (1, 2, 2)
    assert [o for o, _ in rest] == ["builtin:int8-dynamic-compiled"]
    mixed = point | {"bits:bert.encoder.layer.*.intermediate.dense": 4}
    steps = space.plan(mixed)[1]
    assert [s["kind"] for s in steps][-2:] == ["int4-weight-only", "int8-dynamic"]
    assert space.point_of(space.recipe(mixed)) == mixed
    assert all(point_key(n) != point_key(point) for m in space.neighbours(point).values() for n in m)


class _Dropout(TinyStsWorkload):
    def model(self):
        return tiny_bert_encoder(dropout=0.1)  # dropout draws random numbers while training


@pytest.mark.slow  # two distillation runs and four validation passes (about ten seconds under load)
def test_watched_distillation_trains_the_same_weights_as_the_plain_recipe(tmp_path):
    import torch

    from torchslim.recipes import run_recipe
    from torchslim.tuning.budget import Budget
    from torchslim.tuning.composed import run_monitored

    wl = _Dropout(write_sts(tmp_path / "sts", rows_per_split=20))  # 40 train sentences: 2 batches an epoch
    space = ComposedSpace.for_model(wl.model(), **(SMALL | {"depth_epochs": (2,)}))
    recipe = space.recipe({"keep_blocks": "0,2,5", "head_ratio": 0.0, "ffn_ratio": 0.0, "embeddings": "int8",
                           "distill_lr": 0.001, "depth_epochs": 2})  # fmt: skip
    recipe = type(recipe)(recipe.name, recipe.steps[:2])  # layer-dropping, distill (float weights)
    reports = []
    trial = SimpleNamespace(report=lambda v, s: reports.append(s), set_user_attr=lambda k, v: None)
    monitor = DistillMonitor(trial, Budget(wl, wl.model(), max_drop=100.0, margin=0.0))
    watched = run_monitored(wl.model().train(), recipe, wl.context(), monitor)
    plain, _ = run_recipe(wl.model().train(), recipe, wl.context(), measure_steps=False, progress=False)
    assert reports == [1, 2]  # the end of each epoch
    for (name, a), b in zip(watched.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_monitor_prunes_at_the_end_of_a_distill_step_over_the_budget_and_keeps_the_last_weights():
    reports = []
    trial = SimpleNamespace(report=lambda v, s: reports.append((s, v)), set_user_attr=lambda k, v: None)
    wl = SimpleNamespace(metric="q", evaluate=lambda model, split: {"q": model})
    budget = SimpleNamespace(wl=wl, split="val", max_drop=1.0, drop=lambda q: 10.0 - q)
    monitor = DistillMonitor(trial, budget)
    assert [monitor.evaluate(q)["evaluation"] for q in (5.0, 9.5)] == [1.0, 2.0]  # increasing: the last is "best"
    monitor.end_of_step(1)  # drop 0.5 <= 1.0: goes on
    monitor.evaluate(8.0)
    with pytest.raises(optuna.TrialPruned, match="after distill step 4 exceeds the budget"):
        monitor.end_of_step(3)
    assert reports == [(1, 5.0), (2, 0.5), (3, 2.0)]
    with pytest.raises(optuna.TrialPruned, match="recover_limit"):
        DistillMonitor(trial, budget, recover_limit=3.0).evaluate(5.0)


@pytest.mark.slow  # a few tiny tune runs (each trial distils and quantizes a 6-block BERT)
def test_composed_tune_starts_from_the_given_recipe_never_repeats_a_point_and_resumes(tmp_path):
    space = _space()
    start = space.recipe({"keep_blocks": "0,5", "head_ratio": 0.0, "ffn_ratio": 0.0, "embeddings": "int8",
                          "distill_lr": 0.001, "depth_epochs": 1}, name="mine")  # fmt: skip
    (tmp_path / "mine.yaml").write_text(start.to_yaml())
    result = _tune(tmp_path, 3, start=(str(tmp_path / "mine.yaml"),))
    assert result.completed == 3
    best = load_recipe(tmp_path / "out" / "best.yaml")  # the chosen point, runnable by `compress --recipe`
    assert space.point_of(best) in [t.params for t in _study(tmp_path).get_trials()]
    trials = _study(tmp_path).get_trials()
    first = trials[0]
    assert first.user_attrs["origin"].startswith("start:") and first.params == space.point_of(
        load_recipe(tmp_path / "mine.yaml")
    )
    evaluated = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len({point_key(t.params) for t in evaluated}) == len(evaluated) == 3
    assert all("evaluation" not in t.user_attrs.get("prune_reason", "") for t in evaluated)
    # Resumed with the same count: nothing runs again; one more trial: exactly one new point.
    _tune(tmp_path, 3, start=(str(tmp_path / "mine.yaml"),))
    assert len(_study(tmp_path).get_trials()) == len(trials)
    _tune(tmp_path, 4)
    again = [t for t in _study(tmp_path).get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(again) == 4 and len({point_key(t.params) for t in again}) == 4
    assert [t.params for t in again[:3]] == [t.params for t in evaluated]


def test_composed_tune_prunes_a_trial_whose_distillation_is_hopeless(tmp_path):
    _tune(tmp_path, 1, recover_limit=-1e9)  # any drop is "hopeless": pruned at the first evaluation
    (trial,) = [t for t in _study(tmp_path).get_trials() if t.state != TrialState.FAIL]
    assert trial.state == TrialState.PRUNED
    assert "during distillation exceeds recover_limit" in trial.user_attrs["prune_reason"]
    assert trial.intermediate_values  # the drop was reported to Optuna before pruning
    assert trial.user_attrs["evaluations"][0]["drop"] == trial.intermediate_values[1]


class _NoTrainData(TinyStsWorkload):
    def train_data(self, seed: int = 0):
        return None


def test_composed_space_needs_training_data_and_start_points_in_the_space(tmp_path):
    with pytest.raises(ConfigError, match="composed"):
        TuneOptions(max_drop=1.0, out=tmp_path, start=("minilm-edge",))
    wl = _NoTrainData(write_sts(tmp_path / "sts"))
    with pytest.raises(ConfigError, match="gives no training data"):
        tune(wl, TuneOptions(max_drop=1.0, out=tmp_path / "out", composed=True, progress=False))
    space = _space()
    assert space.point_of(builtin_recipes()["minilm-edge"]) is None  # keeps 3 blocks: not a choice here
    assert SMALL["int8"] != EDGE_INT8


def test_cli_start_without_the_composed_space_is_a_config_error(tmp_path, capsys):
    from torchslim.cli import main

    argv = ["tune", "--workload", "tiny_sts:TinyStsWorkload", "--data", str(write_sts(tmp_path / "sts"))]
    argv += ["--max-drop", "1", "--out", str(tmp_path / "out"), "--start", "minilm-edge"]
    assert main(argv) == 3
    assert "--space composed" in capsys.readouterr().err


def test_int4_embedding_formats_plan_their_steps_and_come_back_from_their_recipes():
    space = ComposedSpace.for_model(tiny_bert_encoder())
    assert "int4" in space.embeddings and any(e.endswith("-int4") for e in space.embeddings)
    base = {"keep_blocks": "0,2,5", "depth_epochs": 1, "head_ratio": 0.0, "ffn_ratio": 0.0, "distill_lr": 0.0003}
    base |= {f"bits:{g}": 8 for g in space.groups}
    for fmt, factorized in (("factorized-16-int4", True), ("int4", False), ("factorized-16", True)):
        point = base | {"embeddings": fmt} | ({"embed_epochs": 2} if factorized else {})
        steps = space.recipe(point).steps
        kinds = [s.config.kind for s in steps]
        assert ("factorize-embedding" in kinds) is factorized
        assert steps[-1].config.embeddings == ("int4" if fmt.endswith("int4") else True)
        assert space.point_of(space.recipe(point)) == point
    # the quick plan (no training) runs on the tiny encoder: the factorized table's rows become int4
    point = base | {"embeddings": "factorized-16-int4", "embed_epochs": 2}
    model = tiny_bert_encoder()
    ids = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = (ids, torch.ones_like(ids))
    ctx = Context(example_inputs=batch, calibration=[batch])
    quick = recipe_from_dict({"name": "q", "steps": space.plan(point)[0]})
    for step in quick.steps:
        model = compress_(model, step.config, select=step.select, ctx=ctx)
    assert type(model.bert.embeddings.word_embeddings.table).__name__ == "Int4Embedding"
    with pytest.raises(ConfigError, match="int2"):
        ComposedSpace(blocks=6, keep_blocks=("0,5",), embeddings=("int2",))


def test_embedding_moves_order_formats_by_bytes_per_row():
    space = ComposedSpace(blocks=6, keep_blocks=("0,5",), hidden=384,
                          embeddings=("int8", "int4", "factorized-256", "factorized-256-int4"))  # fmt: skip
    assert space._kind("embeddings", "factorized-256", "int4") == "compress"  # 384 x 4 bits < 256 x 8 bits
    assert space._kind("embeddings", "int4", "factorized-256-int4") == "compress"
    assert space._kind("embeddings", "factorized-256-int4", "int8") == "relax"
