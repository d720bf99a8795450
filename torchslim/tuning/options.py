"""The options of ``tune``, in one frozen dataclass validated in one place.

Example:
    >>> options = TuneOptions(max_drop=0.01, out="out/tune-digits", trials=40)
    >>> options.objective, options.trials, options.confirm
    ('size', 40, 3)
    >>> TuneOptions(max_drop=-1, out="out", trials=0)
    Traceback (most recent call last):
    ...
    torchslim.errors.ConfigError: invalid tuning options
      - max_drop: must be a finite number >= 0, got -1
      - trials: must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torchslim.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from torchslim.tuning.composed import ComposedSpace
    from torchslim.tuning.space import SearchSpace

__all__ = ["OBJECTIVES", "TuneOptions"]

OBJECTIVES = ("size", "latency", "both")


def _number(value: object, *, integer: bool = False) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class TuneOptions:
    """What ``tune(workload, options)`` searches for and how.

    Args:
        max_drop: largest allowed drop of the workload's metric on the validation split, in the metric's
            own units (digits accuracy is a fraction: one point is 0.01; MiniLM's Spearman × 100: 1.0).
        out: output folder (``best.yaml``, ``pareto.png``, ``report.md``, ``trials.json``, the study).
        objective: ``size`` (artifact bytes), ``latency`` (median ms of the example batch) or ``both``.
        trials: complete + pruned trials the study should reach in total (over restarts and workers).
        storage: Optuna storage URL; default ``sqlite:///OUT/study.db``.
        seed: recipe seed and sampler seed.
        worker: offsets the sampler seed (give each parallel worker its own, else they propose the same
            points and the duplicates are discarded).
        data: the workload's data path (when the workload is given by name).
        space: the search space (default: :meth:`SearchSpace.for_model` with the workload's
            ``tune_space_overrides()``).
        latency_runs: timed runs per latency measurement.
        recover_limit: prune a trial with a training step when its quality drop before training exceeds this
            (composed space: when its drop at any evaluation of a distill step does).
        builtins: built-in recipes to evaluate for comparison (None: all but those that ``torch.compile``;
            ``()``: none).
        peers: a ``torchslim bench --json`` file whose rows are added to the plot (their test-split quality).
        threads: torch intra-op threads during the search (restored afterwards).
        progress: report progress on stderr (:mod:`torchslim.core.progress`).
        heartbeat_interval / grace_period: seconds; a trial whose heartbeat is older than ``grace_period`` is
            marked FAIL (its process was killed).
        anchors: start a new study with :meth:`SearchSpace.named_anchors` before sampling.
        confirm: rebuild up to this many of the best feasible trials that train with another seed
            (0: off; see :mod:`torchslim.tuning.tune`).
        margin: standard errors of the paired per-example drop added to the measured drop before it is
            compared with ``max_drop`` (0: the measured drop alone; see :mod:`torchslim.tuning.budget`).
        composed: search :class:`~torchslim.tuning.composed.ComposedSpace` (depth, width, embedding format,
            distillation, int8/int4 per group; every trial trains) instead of the default space; needs a
            workload with training data. ``space`` (when given) wins.
        start: recipes (built-in names or YAML files) whose points are queued first, after the built-in
            recipes the space expresses; each must be a point of the space (composed space only).

    Raises:
        UsageError: unknown objective. ConfigError: every other invalid option, all listed.
    """

    max_drop: float
    out: str | Path
    objective: str = "size"
    trials: int = 20
    storage: str | None = None
    seed: int = 0
    worker: int = 0
    data: str | None = None
    space: SearchSpace | ComposedSpace | None = None
    latency_runs: int = 20
    recover_limit: float | None = None
    builtins: Sequence[str] | None = None
    peers: str | Path | None = None
    threads: int = 1
    progress: bool = True
    heartbeat_interval: int = 5
    grace_period: int = 20
    anchors: bool = True
    confirm: int = 3
    margin: float = 1.0
    composed: bool = False
    start: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}")
        problems = []
        if not (_number(self.max_drop) and self.max_drop >= 0):
            problems.append(f"max_drop: must be a finite number >= 0, got {self.max_drop!r}")
        if not (_number(self.trials, integer=True) and self.trials >= 1):
            problems.append(f"trials: must be an integer >= 1, got {self.trials!r}")
        if not (_number(self.confirm, integer=True) and self.confirm >= 0):
            problems.append(f"confirm: must be an integer >= 0, got {self.confirm!r}")
        if not (_number(self.margin) and self.margin >= 0):
            problems.append(f"margin: must be a finite number >= 0, got {self.margin!r}")
        for name in ("seed", "worker"):
            if not _number(getattr(self, name), integer=True):
                problems.append(f"{name}: must be an integer, got {getattr(self, name)!r}")
        for name in ("latency_runs", "threads"):
            if not (_number(getattr(self, name), integer=True) and getattr(self, name) >= 1):
                problems.append(f"{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if self.recover_limit is not None and not _number(self.recover_limit):
            problems.append(f"recover_limit: must be a finite number, got {self.recover_limit!r}")
        hb, grace = self.heartbeat_interval, self.grace_period
        if not (_number(hb, integer=True) and _number(grace, integer=True) and 1 <= hb < grace):
            problems.append(f"heartbeat_interval: must be an integer >= 1 and < grace_period, got {hb!r} / {grace!r}")
        if not isinstance(self.composed, bool):
            problems.append(f"composed: must be true or false, got {self.composed!r}")
        if isinstance(self.start, str) or not all(isinstance(r, str) for r in self.start):
            problems.append(f"start: a list of recipe names or files, got {self.start!r}")
        elif self.start and not self.composed:
            problems.append("start: queues points of the composed space; give composed=True (--space composed)")
        if isinstance(self.builtins, str):
            problems.append(f"builtins: a list of recipe names, not the string {self.builtins!r}")
        if problems:
            raise ConfigError("invalid tuning options", problems)
