"""The minilm-stsb workload's training data (issue #21): the STS train split's sentences, never the gold
scores, and ``torchslim compress --workload ... --recipe minilm-edge`` running every step through the CLI
(a tiny 6-block BERT with the same workload class stands in for all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from torchslim.cli import main
from torchslim.recipes import builtin_recipes, recipe_from_dict, run_recipe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tiny_sts import TinyStsWorkload, write_sts  # noqa: E402


def test_train_data_is_every_train_sentence_once_per_pass_without_scores(tmp_path):
    wl = TinyStsWorkload(write_sts(tmp_path / "sts"))
    data = wl.train_data()
    train = {s for _, a, b in wl.rows("train") for s in (a, b)}
    held_out = {s for split in ("dev", "test") for _, a, b in wl.rows(split) for s in (a, b)}
    first, second = list(data()), list(data())
    assert all(len(b) == 1 and set(b[0]) == {"input_ids", "attention_mask"} for b in first)  # no labels
    for one_pass in (first, second):
        rows = [r for (b,) in one_pass for r in b["input_ids"].tolist()]
        assert len(rows) == len(train) == len(set(map(tuple, rows)))
    expected = sorted(tuple(r) for r in wl.tokenize(sorted(train))["input_ids"].tolist())
    got = sorted(tuple(r) for (b,) in first for r in b["input_ids"].tolist())
    assert [tuple(x for x in r if x) for r in got] == [tuple(x for x in r if x) for r in expected]
    assert not train & held_out
    assert wl.context().train_data is not None


def _tiny_edge_recipe() -> dict:
    """The built-in minilm-edge recipe, sized for the tiny model and not compiled."""
    recipe = builtin_recipes()["minilm-edge"].to_dict()
    for step in recipe["steps"]:
        if step["kind"] == "factorize-embedding":
            step["rank"] = 8  # the tiny table (300 x 32) shrinks at rank 8, not at the real model's 256
        if step["kind"] == "int8-dynamic":
            step["compile"] = False  # the compiled path is covered by the slow tests of test_edge_blocks
            step["embedding_group_size"] = 8  # int4 rows: a group must divide the rank-8 table
    return recipe


@pytest.mark.slow  # seven steps, three of them training (over ten seconds under load)
def test_workload_context_runs_every_step_of_the_edge_recipe(tmp_path):
    wl = TinyStsWorkload(write_sts(tmp_path / "sts"))
    recipe = recipe_from_dict(_tiny_edge_recipe())
    base = wl.model()
    ctx = wl.context()  # what `torchslim compress --workload` builds: no teacher, the recipe adds one
    model, run = run_recipe(base, recipe, ctx, measure_steps=False, progress=False)
    assert [s.kind for s in run.steps] == [s.config.kind for s in recipe.steps]
    assert len(model.bert.encoder.layer) == 3
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 32  # half the FFN neurons
    assert type(model.bert.embeddings.word_embeddings).__name__ != "Embedding"
    events = " ".join(e for s in run.steps for e in s.events)
    assert "factorize-embedding: 1 table(s) at rank 8" in events and "int8-dynamic: quantized" in events
    assert ctx.teacher is None  # the caller's context is left as it was


@pytest.mark.slow  # the CLI measures the model after every step (tens of seconds under load)
def test_compress_cli_runs_the_minilm_edge_recipe_with_the_input_model_as_teacher(tmp_path):
    data = write_sts(tmp_path / "sts")
    recipe = _tiny_edge_recipe()
    (tmp_path / "edge.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    argv = ["compress", "--workload", "tiny_sts:TinyStsWorkload", "--data", str(data)]
    argv += ["--recipe", str(tmp_path / "edge.yaml"), "--out", str(out), "--latency-runs", "1"]
    argv += ["--json", str(tmp_path / "run.json")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "run.json").read_text())
    kinds = [s["kind"] for s in report["steps"]]
    assert kinds == [s["kind"] for s in recipe["steps"]]
    import torchslim as ts

    wl = TinyStsWorkload(data)
    model = ts.load(out, wl.factory)
    assert len(model.bert.encoder.layer) == 3
    assert type(model.bert.embeddings.word_embeddings).__name__ != "Embedding"
    assert wl.evaluate(model, "test")["cos_min"] > -1.0
