"""Queued (WAITING) trials of ``tune``: never more than the trial count can run, run first when a study is
resumed, and no point queued twice, on the composed space of a tiny 6-block BERT (``tests/edge/tiny_sts.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from torchslim.tuning.composed import ComposedSpace
from torchslim.tuning.moves import point_key
from torchslim.tuning.options import TuneOptions
from torchslim.tuning.tune import STUDY_NAME, tune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from tiny_sts import SMALL_COMPOSED as SMALL  # noqa: E402
from tiny_sts import TinyStsWorkload, tiny_bert_encoder, write_sts  # noqa: E402

POINT = {"head_ratio": 0.0, "ffn_ratio": 0.0, "embeddings": "int8", "depth_epochs": 1}


def _tune(tmp_path: Path, trials: int, **kw) -> None:
    torch.set_num_threads(1)
    space = ComposedSpace.for_model(tiny_bert_encoder(), **SMALL)
    kw = {"max_drop": 100.0, "space": space, "composed": True, "builtins": (), "confirm": 0, "latency_runs": 1,
          "progress": False} | kw  # fmt: skip
    tune(TinyStsWorkload(write_sts(tmp_path / "sts")), TuneOptions(out=tmp_path / "out", trials=trials, **kw))


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")


def _counts(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _queued_keys(study: optuna.Study) -> list[tuple]:
    """The point of every trial that was queued (enqueue_trial), in order; a retry's copy excepted."""
    trials = study.get_trials()
    yielded = {t.number for t in trials if "yielded_to" in t.user_attrs}
    return [point_key(t.system_attrs["fixed_params"]) for t in trials
            if "fixed_params" in t.system_attrs and t.number not in yielded]  # fmt: skip


@pytest.mark.slow  # four tiny composed tune runs (each trial distils a 6-block BERT): about 20 seconds
def test_a_finished_run_leaves_no_queue_and_resumes_run_the_queued_points_first_never_queued_twice(tmp_path):
    start = ComposedSpace.for_model(tiny_bert_encoder(), **SMALL).recipe(
        POINT | {"keep_blocks": "0,2,5", "distill_lr": 0.0003}, name="mine"
    )
    (tmp_path / "mine.yaml").write_text(start.to_yaml())
    mine = (str(tmp_path / "mine.yaml"),)
    _tune(tmp_path, 1, start=mine)
    # Trial 0 (the start point) is feasible and improves: its compress move would be queued, but the count is
    # full. Before: 1 COMPLETE and 1 WAITING left behind.
    assert _counts(_study(tmp_path)) == {"COMPLETE": 1}

    # A killed run leaves a queued point behind; the resumed run runs it first and queues nothing else.
    left = POINT | {"keep_blocks": "0,5", "distill_lr": 0.001}
    _study(tmp_path).enqueue_trial(left, user_attrs={"origin": "left by a killed run"})
    _tune(tmp_path, 2, start=mine)
    study = _study(tmp_path)
    assert _counts(study) == {"COMPLETE": 2}
    assert point_key(study.trials[1].params) == point_key(left)
    assert study.trials[1].user_attrs["origin"] == "left by a killed run"

    # Resumed with the same count: nothing runs, nothing is queued.
    _tune(tmp_path, 2, start=mine)
    assert _counts(_study(tmp_path)) == {"COMPLETE": 2}

    # Given two more trials, the refinement of the best feasible trial continues (queued first), then the sampler.
    _tune(tmp_path, 4, start=mine)
    study = _study(tmp_path)
    counts = _counts(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4 and "WAITING" not in counts
    evaluated = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len({point_key(t.params) for t in evaluated}) == 4  # the whole space, each point once
    queued = _queued_keys(study)
    assert len(queued) == len(set(queued))  # no point queued twice over four runs
    origins = [t.user_attrs.get("origin", "") for t in evaluated]
    assert origins[:2] == ["start:" + mine[0], "left by a killed run"]
