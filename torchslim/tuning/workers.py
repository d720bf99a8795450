"""Several ``tune`` workers on one study: whose turn it is, points never evaluated twice, killed workers' trials.

The workers share nothing but the study's storage (:mod:`torchslim.tuning.storage`): every rule here reads
the trials stored there, so it holds for processes on one machine (SQLite) and on several (PostgreSQL).

* **The count** (:func:`wait_turn`): a trial runs only while the trials complete, pruned or running ahead
  of it (started before it) leave room under ``trials``; a surplus trial is recorded FAIL (``surplus``) and ends its worker.
* **No point twice** (:func:`duplicate_of`): a trial's parameters are stored when it draws them, before
  it looks for another evaluated or running trial on the same point; of two workers that draw the same
  point at once, the one that looks second sees the first.
* **Killed workers** (:func:`yield_to_retry`): the heartbeat marks a killed worker's running trial FAIL
  and queues a copy of it (system attribute ``failed_trial``); that retry runs before other queued or new
  points, so a study whose count fills up still evaluates the killed trial's point.
* **Late heartbeats** (:func:`optimize`): a live worker whose trial another worker failed as stale goes
  on with its next trial instead of ending with Optuna's ``Cannot tell a FAIL trial``.

Each trial records the ``worker`` (host name and process id) that ran it (:func:`record_worker`).
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Any

from torchslim.core.progress import Task
from torchslim.tuning.moves import point_key
from torchslim.tuning.study import completed_trials

__all__ = ["Skip", "Stop", "duplicate_of", "optimize", "record_worker", "stale_tell", "wait_turn", "yield_to_retry"]


class Skip(Exception):
    """A trial that is recorded FAIL without counting: a duplicate, a surplus trial, a trial that gave its turn
    to a retry, or a failing recipe."""


def record_worker(trial: Any) -> None:
    """Store ``host:pid`` of this process on ``trial`` (user attribute ``worker``)."""
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")


def wait_turn(trial: Any, trials: int) -> None:
    """Return when ``trial`` may run; raise :class:`Skip` (``surplus``) when the study already has ``trials``
    done. While the trials done and those running ahead of it fill the count, wait: the ones ahead may belong
    to a killed worker, whose heartbeat goes stale after the grace period."""
    import optuna
    from optuna.trial import TrialState

    study = trial.study
    while True:
        all_trials = study.get_trials(deepcopy=False)
        done = completed_trials(all_trials)
        mine = next((_started(t) for t in all_trials if t.number == trial.number), (trial.datetime_start, trial.number))
        ahead = sum(t.state == TrialState.RUNNING and _started(t) < mine for t in all_trials)
        if done >= trials:
            trial.set_user_attr("surplus", True)
            raise Skip("surplus")
        if done + ahead < trials:
            return
        time.sleep(1.0)
        optuna.storages.fail_stale_trials(study)


def _started(trial: Any) -> tuple[Any, int]:
    """The order in which trials began running: their start time, then their number. Not the number alone: a
    queued trial keeps the number it was queued with, and a worker may pop it after another worker has started
    a newer one (a study ran 6 trials of 5 that way: trial 5 started before the queued 3 and 4, and each of
    those saw no running trial numbered below it). Start times come from each worker's clock: workers on
    several hosts need synchronised clocks for this order to hold."""
    return (trial.datetime_start or datetime.datetime.max, trial.number)


def duplicate_of(trial: Any) -> int | None:
    """The number of another trial on ``trial``'s point that is evaluated or running, or None.

    ``trial``'s parameters are stored before this check, so of two workers that drew the same point at once,
    the one that checks second sees the first: both may give the point up, never both run it.
    """
    from optuna.trial import TrialState

    key = point_key(trial.params)
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.number != trial.number and point_key(other.params) == key:
            return other.number
    return None


def yield_to_retry(trial: Any) -> None:
    """Raise :class:`Skip` when a killed worker's trial is queued for a retry and ``trial`` is not a retry.

    Optuna pops queued trials oldest first and the retry is queued last, so without this a study whose count
    fills up first would never run the killed trial's point. A queued point that ``trial`` took is queued
    again, behind the retry; ``trial`` is recorded FAIL with ``yielded_to`` (not a failure of the search).
    """
    from optuna.trial import TrialState

    trials = trial.study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)
    if "failed_trial" in me.system_attrs:
        return
    retries = [t.number for t in trials if t.state == TrialState.WAITING and "failed_trial" in t.system_attrs]
    if not retries:
        return
    fixed = me.system_attrs.get("fixed_params")
    if fixed:
        trial.study.enqueue_trial(fixed, user_attrs={"origin": me.user_attrs.get("origin", "queued")})
    trial.set_user_attr("yielded_to", retries[0])
    raise Skip(f"gave its turn to trial {retries[0]}, the retry of a killed worker's trial")


def optimize(study: Any, fn: Any, stop: Stop, bar: Task) -> None:
    """``study.optimize`` until ``stop`` ends it, surviving a trial that another worker failed meanwhile.

    A worker whose heartbeat was late (a loaded machine, a long garbage collection) may find its running
    trial marked FAIL by another worker's stale-trial check; Optuna then refuses to record the result
    (``ValueError: Cannot tell a FAIL trial``, which Optuna 4's ``optimize`` re-raises as an ``AssertionError``
    from its bookkeeping, with the ``ValueError`` as its context). The point was queued again by the
    stale-trial check, so another worker evaluates it; this worker notes it and goes on instead of ending
    the whole run with a traceback.
    """
    for _ in range(max(20, stop.trials)):  # bounded: each pass loses at most one trial
        try:
            study.optimize(fn, catch=(Skip,), callbacks=[stop])
            return
        except (ValueError, AssertionError) as e:
            if not stale_tell(e):
                raise
            bar.note("tune: another worker marked this worker's trial failed (its heartbeat was late); going on")
            if completed_trials(study.get_trials(deepcopy=False)) >= stop.trials:
                return


def stale_tell(error: BaseException | None) -> bool:
    """True when ``error`` (or an exception it was raised while handling) is Optuna's refusal to tell a trial
    that is already FAIL."""
    while error is not None:
        if isinstance(error, ValueError) and "Cannot tell a FAIL trial" in str(error):
            return True
        error = error.__context__
    return False


class Stop:
    """Optuna callback: advance the bar, stop when the study holds ``trials`` done ones or trials keep failing."""

    def __init__(self, trials: int, bar: Task) -> None:
        self.trials, self.bar, self.failures = trials, bar, 0

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        done = completed_trials(study.get_trials(deepcopy=False))
        self.bar.update(completed=min(done, self.trials), status=f"trial {trial.number} {trial.state.name.lower()}")
        failed = trial.state == TrialState.FAIL and "yielded_to" not in trial.user_attrs
        self.failures = self.failures + 1 if failed else 0
        # Surplus: the others finished the count. Many failures in a row: the space is exhausted
        # (only duplicates left) or every recipe fails; stop rather than spin.
        if done >= self.trials or trial.user_attrs.get("surplus") or self.failures > max(20, self.trials):
            study.stop()
