"""torchslim.tuning: search space, resumable/parallel study, best recipe, sensitivity (digits, few trials)."""

from __future__ import annotations

import importlib
import multiprocessing as mp
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from torchslim.cli import main
from torchslim.errors import ConfigError
from torchslim.recipes import builtin_recipes, load_recipe, recipe_from_dict, run_recipe
from torchslim.tuning import SearchSpace, TuneOptions, sensitivity, tune
from torchslim.tuning.moves import same_steps
from torchslim.tuning.space import describe_point
from torchslim.workloads import get_workload

MAX_DROP = 0.02
# The submodule (the package attribute ``tune`` is the function).
tune_module = importlib.import_module("torchslim.tuning.tune")


def _space() -> SearchSpace:
    """A small space in which most points meet the budget (the tests check mechanics, not the search)."""
    model = get_workload("digits").model()
    return SearchSpace.for_model(
        model,
        has_train_data=True,
        prune_methods=("none", "magnitude", "channels"),
        sparsity=(0.1, 0.5, 0.1),
        channel_ratio=(0.1, 0.4, 0.1),
        channel_round_to=(1,),
        recovery=("none",),  # training is covered by the recipe tests; here it would only cost time
        quant=("none", "bf16", "int8"),
    )


def _run(out: Path, trials: int, worker: int = 0) -> tune_module.TuneResult:
    options = TuneOptions(
        max_drop=MAX_DROP,
        trials=trials,
        out=out,
        worker=worker,
        space=_space(),
        latency_runs=3,
        builtins=(),
        progress=False,
        grace_period=30,  # no worker is killed here: a late heartbeat under load must not fail a trial
        heartbeat_interval=1,
    )
    return tune("digits", options)


def _trials(out: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(out / "study.db") as db:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def _done_params(result: tune_module.TuneResult) -> list[tuple]:
    return [
        tuple(sorted(t.params.items())) for t in result.study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")
    ]


def test_space_recipe_round_trips_through_yaml(tmp_path: Path) -> None:
    space = _space()
    params = {"prune": "channels", "channel_ratio": 0.3, "recovery": "finetune", "quant": "int8"}
    params |= {f"bits:{g}": 8 for g in space.groups} | {"bits:features.0": 32}
    recipe = space.recipe(params, name="t")
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    loaded = load_recipe(tmp_path / "r.yaml")
    assert loaded.to_dict() == recipe.to_dict()
    assert [s.config.kind for s in loaded.steps] == ["channel-pruning", "finetune", "fold-batchnorm", "int8-static"]
    assert loaded.steps[-1].select.include == (r"^features\.4$", r"^features\.8$", r"^classifier$")
    quick, full = space.plan(params)
    assert [s["kind"] for s in quick] == ["channel-pruning", "fold-batchnorm", "int8-static"]
    assert full is not None and full[1]["kind"] == "finetune"


def test_killed_study_resumes_from_stored_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_call = tune_module._Objective.__call__
    calls = {"n": 0}

    def killed_on_third(self, trial):  # the process "dies" (Ctrl-C) during its third trial
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_call(self, trial)

    monkeypatch.setattr(tune_module._Objective, "__call__", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, trials=4)
    before = _trials(tmp_path)
    assert [s for _, s in before] == ["COMPLETE", "COMPLETE", "FAIL"] or sum(s != "FAIL" for _, s in before) == 2
    monkeypatch.setattr(tune_module._Objective, "__call__", real_call)
    result = _run(tmp_path, trials=4)
    after = _trials(tmp_path)
    assert after[: len(before)] == before  # the stored trials are kept, not rerun
    assert result.completed == 4
    assert sum(s in ("COMPLETE", "PRUNED") for _, s in after) == 4
    assert len(after) - len(before) == 2 + sum(s == "FAIL" for _, s in after[len(before) :])
    params = _done_params(result)
    assert len(set(params)) == len(params)


def _worker(out: str, worker: int) -> None:
    torch.set_num_threads(1)
    _run(Path(out), trials=5, worker=worker)


def test_two_workers_share_the_study_without_duplicates(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    result = _run(tmp_path, trials=5)  # nothing left to do: only loads and writes the outputs
    numbers = [t.number for t in result.study.get_trials()]
    assert len(numbers) == len(set(numbers))
    assert result.completed == 5
    params = _done_params(result)
    assert len(params) == 5 and len(set(params)) == 5

    # The best recipe: valid YAML that loads and runs, and meets the budget on the validation split.
    assert result.chosen is not None
    recipe = load_recipe(result.paths["best"])
    assert yaml.safe_load(result.paths["best"].read_text())["name"] == "tuned-digits-size"
    wl = get_workload("digits")
    base = wl.evaluate(wl.model(), "val")["accuracy"]
    model, _ = run_recipe(wl.model(), recipe, wl.context(), measure_steps=False)
    acc = wl.evaluate(model, "val")["accuracy"]
    assert base - acc <= MAX_DROP
    assert acc == pytest.approx(result.chosen["quality"])  # seeded: the same model as in the trial
    assert result.paths["pareto"].read_bytes()[:4] == b"\x89PNG"
    assert "## Best: trial" in result.paths["report"].read_text()


def test_sensitivity_has_one_row_per_layer_and_a_png(tmp_path: Path) -> None:
    result = sensitivity("digits", methods=("int8", "prune"), ratio=0.9, progress=False)
    model = get_workload("digits").model()
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert [r["layer"] for r in result.rows] == layers
    assert all(r["int8"] is not None and r["prune-0.9"] is not None for r in result.rows)
    assert max(r["prune-0.9"] for r in result.rows) > 0.05  # 90% pruning of some layer hurts
    paths = result.write(tmp_path)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["markdown"].read_text().count("\n| ") == len(layers) + 1


def test_cli_errors_use_the_exit_codes(tmp_path: Path) -> None:
    base = ["tune", "--workload", "digits", "--out", str(tmp_path), "--trials", "1"]
    assert main([*base, "--max-drop", "-1"]) == 3
    assert main([*base, "--max-drop", "0.01", "--confirm", "-1"]) == 3  # TuneOptions: an invalid option
    assert main(["tune", "--workload", "nope", "--out", str(tmp_path), "--max-drop", "0.01"]) == 2
    with pytest.raises(SystemExit) as e:
        main([*base, "--max-drop", "0.01", "--objective", "speed"])
    assert e.value.code == 2
    assert main(["sensitivity", "--workload", "digits", "--out", str(tmp_path), "--methods", "int3"]) == 3


# -- anchors from the built-in recipes, refinement, duplicates ------------------------------------


def test_builtin_recipes_become_exact_anchors() -> None:
    space = SearchSpace.for_model(get_workload("digits").model(), has_train_data=True)
    recipes = builtin_recipes()
    anchors = dict(space.named_anchors())
    for name, ratio, epochs, lr in (("kws-tiny", 0.8125, 30, 0.003), ("default", 0.5, 8, 0.002)):
        point = space.point_of(recipes[name])
        assert point is not None and anchors[f"builtin:{name}"] == point
        assert (point["channel_ratio"], point["distill_epochs"], point["distill_lr"]) == (ratio, epochs, lr)
        assert same_steps(space.recipe(point), recipes[name])
        assert [s.config.kind for s in space.recipe(point).steps] == [
            "channel-pruning", "distill", "fold-batchnorm", "int8-static"
        ]  # fmt: skip
    assert list(anchors)[: len([o for o in anchors if o.startswith("builtin:")])] == [
        o for o in anchors if o.startswith("builtin:")
    ]  # built-ins first
    # Not expressible: a MACs target, QAT, a ratio off the 1/32 grid, more epochs than the choices.
    assert space.point_of(recipes["channels-2x"]) is None
    assert space.point_of(recipes["int8-qat"]) is None
    kws = recipes["kws-tiny"].to_dict()
    for change in ({"ratio": 0.8}, {"epochs": 31}):
        steps = [dict(s, **{k: v for k, v in change.items() if k in s}) for s in kws["steps"]]
        assert space.point_of(recipe_from_dict({**kws, "steps": steps})) is None
    assert SearchSpace(distill_epochs=20).distill_epochs == (20,)  # one value: one choice


def test_neighbours_are_points_of_the_space_one_step_away() -> None:
    space = SearchSpace.for_model(get_workload("digits").model(), has_train_data=True)
    kws = space.point_of(builtin_recipes()["kws-tiny"])
    moves = space.neighbours(kws)
    # One channel-ratio step, or the first sparsity step on top of the channels (Deep Compression's order).
    compress = [(p["channel_ratio"], p["channel_sparsity"]) for p in moves["compress"]]
    assert compress == [(0.84375, 0.0), (0.8125, 0.3)]
    assert {p["distill_lr"] for p in moves["recover"] if p.get("recovery") == "distill"} == {0.002}
    assert sum(p.get(f"bits:{g}") == 32 for p in moves["relax"] for g in space.groups) == len(space.groups)
    top = space.neighbours(kws | {"channel_ratio": 0.875})
    assert all(p.get("channel_ratio", 0) <= 0.875 for p in top["compress"])  # the grid ends there
    for kind, points in moves.items():
        for p in points:
            assert space.point_of(space.recipe(p)) == p, (kind, p)  # a valid point: its recipe reads back
            assert sum(p.get(k) != v for k, v in kws.items()) + len(p.keys() - kws.keys()) >= 1


class _SameProposal(optuna.samplers.RandomSampler):
    """Proposes the same point every time, like TPE once it has converged."""

    def __init__(self, point: dict) -> None:
        super().__init__(seed=0)
        self.point = point

    def sample_independent(self, study, trial, name, distribution):  # noqa: ANN001, ANN201
        return self.point[name]


def _tune_channels(out: Path, trials: int, ratio: float, monkeypatch: pytest.MonkeyPatch) -> tune_module.TuneResult:
    """Channel pruning alone, four ratios, no training, every point within budget; the sampler repeats ``ratio``."""
    space = SearchSpace(prune_methods=("channels",), channel_ratio=(0.125, 0.5, 0.125), channel_round_to=(1,),
                        recovery=("none",), quant=("none",))  # fmt: skip
    assert space.anchors() == []  # no built-in recipe is only channel pruning at a fixed ratio
    point = {"prune": "channels", "channel_ratio": ratio}
    monkeypatch.setattr(tune_module, "make_sampler", lambda objective, seed, trials: _SameProposal(point))
    options = TuneOptions(
        max_drop=1.0, trials=trials, out=out, space=space, latency_runs=3, builtins=(), progress=False
    )
    return tune("digits", options)


def test_a_new_best_is_refined_one_grid_step_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _tune_channels(tmp_path, trials=4, ratio=0.125, monkeypatch=monkeypatch)
    done = [t for t in result.study.get_trials() if t.state.name == "COMPLETE"]
    assert [t.params["channel_ratio"] for t in done] == [0.125, 0.25, 0.375, 0.5]
    assert [t.user_attrs.get("origin") for t in done] == [None] + [f"compress: trial {t.number}" for t in done[:-1]]
    sizes = [t.user_attrs["size_bytes"] for t in done]
    assert sizes == sorted(sizes, reverse=True) and not any(t.user_attrs.get("cut_short") for t in done)
    assert result.chosen["number"] == done[-1].number


def test_a_repeated_proposal_is_replaced_not_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _tune_channels(tmp_path, trials=3, ratio=0.5, monkeypatch=monkeypatch)
    trials = result.study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert result.completed == 3 and len(done) == 3
    assert len({t.params["channel_ratio"] for t in done}) == 3  # never the same point twice
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all(t.params["channel_ratio"] == 0.5 for t in failed)
    assert all(t.user_attrs["duplicate_of"] == done[0].number for t in failed)
    # The first repeat is replaced by the neighbour of the repeated point (one step fewer channels removed).
    first = trials[failed[0].number + 1]
    assert first.user_attrs["origin"] == f"instead of duplicate trial {failed[0].number}"
    assert first.params["channel_ratio"] == 0.375 and first.user_attrs["cut_short"]  # larger: not evaluated
    assert "FAIL (duplicate)" in result.paths["report"].read_text()


def test_channel_sparsity_thins_the_channel_pruned_model_after_its_recovery() -> None:
    space = SearchSpace.for_model(get_workload("digits").model(), has_train_data=True)
    assert space.channel_sparsity[0] == 0.0 and len(space.channel_sparsity) > 1
    point = space.point_of(builtin_recipes()["kws-tiny"]) | {"channel_sparsity": 0.5}
    quick, full = space.plan(point)
    assert [s["kind"] for s in quick] == ["channel-pruning", "magnitude-pruning", "fold-batchnorm", "int8-static"]
    assert [s["kind"] for s in full] == [
        "channel-pruning",
        "distill",
        "gradual-pruning",
        "fold-batchnorm",
        "int8-static",
    ]
    assert full[2]["final_sparsity"] == 0.5 and quick[1]["sparsity"] == 0.5
    assert space.point_of(space.recipe(point)) == point  # reads back from its recipe
    assert "then magnitude 0.5" in describe_point(point)
    assert space.point_of(builtin_recipes()["kws-tiny"])["channel_sparsity"] == 0.0
    with pytest.raises(ConfigError, match="channel_sparsity"):
        SearchSpace(channel_sparsity=(0.5, 0.7))  # 0.0 (none) must come first
