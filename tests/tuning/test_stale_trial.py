"""A worker whose running trial another worker failed as stale goes on instead of crashing."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from torchslim.tuning import workers


class _Bar:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def update(self, **_: object) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_trial_failed_by_another_worker_does_not_end_the_run() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    calls = {"n": 0}

    def objective(trial: optuna.Trial) -> float:
        calls["n"] += 1
        x = trial.suggest_float("x", 0.0, 1.0)
        if calls["n"] == 2:  # what another worker's fail_stale_trials does to a late heartbeat
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return x

    with pytest.raises((ValueError, AssertionError)) as plain:  # plain Optuna ends the run
        optuna.create_study().optimize(
            lambda t: (t.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL), 0.0)[1], n_trials=1
        )
    assert workers.stale_tell(plain.value)
    assert not workers.stale_tell(ValueError("another problem"))
    bar = _Bar()
    workers.optimize(study, objective, workers.Stop(4, bar), bar)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4
    assert states.count(TrialState.FAIL) == 1
    assert len(bar.notes) == 1 and "another worker" in bar.notes[0]
