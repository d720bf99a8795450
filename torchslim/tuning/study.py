"""The Optuna study behind ``tune``: its storage (:mod:`torchslim.tuning.storage`), sampler and settings, the
trial count, and the result type.

Example:
    >>> default_storage("/tmp/x")
    'sqlite:////tmp/x/study.db'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError, UnsafeInputError
from torchslim.tuning.space import SearchSpace
from torchslim.tuning.storage import open_storage, shared_storage

__all__ = [
    "TuneResult",
    "check_settings",
    "completed_trials",
    "default_storage",
    "fresh_context",
    "load_study",
    "make_sampler",
    "open_storage",
    "reseeded_context",
    "shared_storage",
    "study_settings",
]


@dataclass
class TuneResult:
    """What ``tune`` found.

    Attributes:
        study: the Optuna study. completed: complete + pruned trials in the study.
        baseline: ``{"quality": val metric, "test_quality", "size_bytes", "latency_ms"}``.
        best: rows (see ``trial_rows``) of the best feasible trial(s): one, or the Pareto front.
        chosen: the row written as ``best.yaml`` (with its test-split quality), or None when none is feasible.
        builtins: rows of the built-in recipes evaluated the same way.
        paths: output name -> path.
    """

    study: Any
    completed: int
    baseline: dict[str, Any]
    best: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    builtins: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def default_storage(out: str | Path) -> str:
    """``sqlite:///OUT/study.db`` with an absolute path.

    Example:
        >>> default_storage("/tmp/x")
        'sqlite:////tmp/x/study.db'
    """
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def fresh_context(wl: Any, ctx: Any) -> Any:
    """``ctx`` with new training data and events: a workload's ``train_data`` callable shuffles each epoch
    with the next seed, so sharing one between trials would make a trial depend on the ones before it."""
    return dataclasses.replace(ctx, train_data=wl.train_data(), events=[])


def reseeded_context(wl: Any, ctx: Any, seed: int) -> Any:
    """``ctx`` with ``seed`` and fresh training data shuffled from ``seed`` when the workload's ``train_data``
    takes a ``seed`` keyword (digits, fsdd-kws); otherwise only the torch seeds change."""
    import inspect

    params = inspect.signature(wl.train_data).parameters
    data = wl.train_data(seed=seed) if "seed" in params else wl.train_data()
    return dataclasses.replace(ctx, train_data=data, events=[], seed=seed)


def _constraint(trial: Any) -> Sequence[float]:
    # Pruned trials never reached the final evaluation: treated as infeasible by the samplers.
    return trial.user_attrs.get("constraint", [1.0])


def make_sampler(objective: str, seed: int, trials: int) -> Any:
    """NSGA-II for ``objective="both"`` (a Pareto front), else multivariate TPE; both honour the quality constraint."""
    import optuna

    if objective == "both":
        pop = max(4, min(20, trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed, **_constraints_kw())
    startup = max(4, min(10, trials // 3))
    return optuna.samplers.TPESampler(
        n_startup_trials=startup, seed=seed, multivariate=True, group=True, **_constraints_kw()
    )


def _constraints_kw() -> dict[str, Any]:
    """Optuna >= 5 reads constraints set on the trial (``Trial.set_constraint``); older ones need a function."""
    import optuna

    return {} if hasattr(optuna.trial.Trial, "set_constraint") else {"constraints_func": _constraint}


def study_settings(workload: str, metric: str, max_drop: float, objective: str, space: SearchSpace, seed: int) -> dict:
    """The settings a study is created with; continuing it with other settings is refused (:func:`check_settings`)."""
    return {
        "workload": workload,
        "metric": metric,
        "max_drop": max_drop,
        "objective": objective,
        "seed": seed,
        "space": space.signature(),
    }


def check_settings(study: Any, settings: dict[str, Any]) -> None:
    """Store the settings on a new study; refuse to continue one created with other settings.

    A stored study is read back first (:func:`~torchslim.tuning.study_check.check_study`): a damaged one,
    or one whose torchslim attributes have other types, is UnsafeInputError (exit 4).
    """
    from torchslim.tuning.study_check import check_study

    check_study(study)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
        return
    problems = [f"{k}: stored {stored.get(k)!r}, now {v!r}" for k, v in settings.items() if stored.get(k) != v]
    if problems:
        raise ConfigError(
            "the study in this storage was created with other settings; use the same options or a new --out/--storage",
            problems,
        )


def completed_trials(trials: Sequence[Any]) -> int:
    """How many of ``trials`` count against the budget: complete and pruned ones."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def load_study(storage: Any, name: str, directions: Sequence[str], sampler: Any = None) -> Any:
    """``optuna.create_study(..., load_if_exists=True)`` on ``storage``: the study ``name``, created or loaded.

    A database whose rows contradict each other (a study name that its unique index finds but its table
    does not hold, a row Optuna cannot commit back) makes Optuna raise ``KeyError`` or
    ``StorageInternalError``: that is a damaged study file, exit 4 naming the problem.

    Example:
        >>> load_study(None, "demo", ["minimize"]).study_name
        'demo'
    """
    import optuna
    from sqlalchemy.exc import DatabaseError

    try:
        return optuna.create_study(
            storage=storage, study_name=name, directions=list(directions), load_if_exists=True, sampler=sampler
        )
    except (KeyError, optuna.exceptions.StorageInternalError, DatabaseError) as e:
        raise UnsafeInputError(f"the tune study database is damaged: {type(e).__name__}: {str(e)[:200]}") from None
