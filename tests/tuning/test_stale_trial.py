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


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # optuna's fail_stale_trials
def test_a_queued_trial_popped_late_counts_the_newer_trial_started_before_it(tmp_path) -> None:
    """The count orders running trials by start, not by number: a queued trial (a low number) that a worker
    pops after another worker started a fresh one (a higher number) waits for it, and is surplus once it
    completes the count. Ordered by number, both ran: a study of 5 trials once completed 6."""
    import threading

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.enqueue_trial({"x": 0.5})  # trial 0, queued
    fresh_id = study._storage.create_new_trial(study._study_id)  # trial 1, started by another worker
    fresh = optuna.Trial(study, fresh_id)
    workers.wait_turn(fresh, 1)  # nothing started before it: it runs
    queued = study.ask()  # pops trial 0 now, after trial 1 started
    assert (queued.number, fresh.number) == (0, 1)
    outcome: list[object] = []

    def wait() -> None:
        try:
            workers.wait_turn(queued, 1)
            outcome.append("ran")
        except workers.Skip as skip:
            outcome.append(str(skip))

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(timeout=0.5)
    assert outcome == []  # waiting for trial 1, which fills the count
    study.tell(fresh, 1.0)
    waiter.join(timeout=10)
    assert outcome == ["surplus"]
