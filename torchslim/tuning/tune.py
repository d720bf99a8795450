"""``tune``: accuracy-aware search over recipes with Optuna, stored in SQLite so it resumes and parallelizes.

One objective (``size`` or ``latency``) uses TPE (Bergstra et al., 2011, "Algorithms for
Hyper-Parameter Optimization"); ``both`` searches the size/latency Pareto front with NSGA-II (Deb et al.,
2002). The constraint is the budget: ``drop = baseline - quality`` (reversed when lower is better) of the
workload's metric on its validation split, plus ``margin`` standard errors of that drop when the
workload gives per-example scores (:mod:`torchslim.tuning.budget`; digits: per-image correctness), must
satisfy ``drop + margin * se <= max_drop``. The margin keeps the search from picking models that the
few validation examples happen to favour. Infeasible trials are kept (user attribute
``constraint = [drop + margin * se - max_drop]``, read by the samplers' ``constraints_func``).

A trial, cheapest work first:

1. the recipe without its training step (``SearchSpace.plan``'s *quick* recipe): size and latency;
2. **stopped early** (reason in ``prune_reason``) when its size/latency cannot beat the
   best feasible trial so far (training never changes them): recorded COMPLETE with that exact objective
   and ``cut_short``, without evaluating its quality (the sampler learns from it; never chosen as best);
   otherwise its quality before recovery is evaluated; **pruned** (``TrialPruned``) when
   the quick quality drop exceeds ``recover_limit``. Either way the training is skipped;
3. otherwise the full recipe, evaluated on the validation split.

**Latency under a changing load.** The baseline's latency is measured once, at the start; a trial's model
is timed later, when the machine's load may differ. So each trial's (and each built-in recipe's) model is
timed round-robin with the baseline model in one call (:func:`torchslim.measure.interleaved_latency`):
``speedup`` = the baseline's median / the model's median in that same run, and ``latency_ms`` (what the
``latency`` objective minimises and what "cannot beat" compares) = the baseline's start latency / ``speedup``,
a figure the load does not move. The raw medians are kept as ``raw_latency_ms`` and ``baseline_raw_ms``.

Where trials come from (user attribute ``origin``): a new study is queued its anchors first
(:meth:`SearchSpace.named_anchors`: every built-in recipe the space expresses exactly, then the usual
recipe of each family), so the best trial is never worse than those built-ins. Then a local refinement
(:meth:`SearchSpace.neighbours`) is queued around good points, ahead of the sampler's proposals:

* a feasible trial that beat every feasible trial before it: its ``compress`` neighbours (one grid step
  more channels removed, one group at fewer bits, ...), up to ``REFINE_MOVES``;
* a near miss (infeasible, drop at most ``2 * max_drop``, but smaller/faster than every feasible trial):
  its ``recover`` neighbours (more distillation epochs, another learning rate, a recovery step added).

No more points are queued than the trial count can still run (``trials`` less the trials done, running
and queued), so a finished run leaves no queued (WAITING) trials behind. Queued points run before the
sampler's proposals, also in a resumed run; a point already tried or queued is never queued again. A
resumed run given more trials, with nothing queued, first queues the refinement of its best feasible trial.

The sampler's proposals fill the rest. A proposal equal to a point already evaluated or running is
not run again: it is recorded FAIL (``duplicate_of``, not counted) and replaced in the queue by
the first neighbour of that point not yet tried (TPE re-proposes its favourite once it has converged,
so its neighbourhood is where to look next), or by a random point when all of them were.

**Confirmation** (``confirm``, on by default): picking the smallest/fastest of many trials near the
budget favours those whose training happened to land well on the validation split (360 digits images:
one accuracy point is 3.6 images). After the search, the feasible trials are taken best first; one
with a training step is rebuilt with another seed (``seed + CONFIRM_SEED_OFFSET``: weight
initialisation, dropout and, when the workload's ``train_data`` takes a ``seed``, the data order) and
kept only if its judged drop (``drop + margin * se``) averaged over both runs stays within the budget; a trial without training is
the same model with any seed and passes as it is (no cost). The first that passes is chosen; at most
``confirm`` rebuilds are made (when all fail, the next feasible trial is chosen unconfirmed, and the
report says so). Results are stored with the study (user attribute ``confirmations``) and in
``trials.json`` / ``report.md``.

The study lives in ``sqlite:///OUT/study.db`` or in the ``storage`` URL (PostgreSQL for workers on
several machines; :mod:`torchslim.tuning.storage`), ``load_if_exists``: a killed run restarted with the
same command continues with the trials already stored until ``trials`` are complete or pruned in total;
several processes on the same storage share the count. How they share it without evaluating a point
twice, and how a killed worker's trial is marked FAIL and its point retried, is
:mod:`torchslim.tuning.workers`.

Example (two trials in a tiny space on the digits workload, a few seconds):
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> space = SearchSpace(prune_methods=("none", "magnitude"), recovery=("none",), quant=("none", "bf16"))
    >>> options = TuneOptions(max_drop=0.02, trials=2, out=out, space=space, progress=False, builtins=())
    >>> result = tune("digits", options)
    >>> result.completed
    2
    >>> sorted(p.name for p in result.paths.values())
    ['best.yaml', 'pareto.png', 'report.md', 'trials.json']
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from torchslim.core.progress import progress as progress_task
from torchslim.errors import TorchslimError, UsageError
from torchslim.tuning.budget import Budget
from torchslim.tuning.composed import ComposedSpace, DistillMonitor, run_monitored
from torchslim.tuning.moves import MOVES, point_key
from torchslim.tuning.options import OBJECTIVES, TuneOptions
from torchslim.tuning.space import SearchSpace, describe_point
from torchslim.tuning.study import (
    TuneResult,
    check_settings,
    completed_trials,
    default_storage,
    fresh_context,
    load_study,
    make_sampler,
    reseeded_context,
    shared_storage,
    study_settings,
)
from torchslim.tuning.workers import Skip, Stop, duplicate_of, optimize, record_worker, wait_turn, yield_to_retry

__all__ = ["OBJECTIVES", "TuneOptions", "TuneResult", "default_storage", "tune"]

STUDY_NAME = "torchslim-tune"
# A latency within this fraction of the best is not "worse": one-thread timings on a shared machine jitter.
LATENCY_SLACK = 0.05
# Refinement moves queued after one trial (each is one trial of the budget).
REFINE_MOVES = 4
# The confirmation run's seed is the study seed plus this: far from seed + 1, whose epoch shuffles
# (seed + k for the k-th pass) would mostly repeat the original run's.
CONFIRM_SEED_OFFSET = 10_007
# The latency figures of a measured model (:func:`torchslim.measure.relative_latency`), stored with each
# trial and built-in row.
SPEED_KEYS = ("latency_ms", "speedup", "raw_latency_ms", "baseline_raw_ms")


class _Objective:
    """The trial function (see the module docstring); holds the baseline and the workload."""

    def __init__(self, *, wl: Any, base: torch.nn.Module, ctx: Any, space: SearchSpace, settings: dict, budget: Budget,
                 baseline: dict, trials: int, seed: int, latency_runs: int, recover_limit: float | None) -> None:  # fmt: skip
        self.wl, self.base, self.ctx, self.space, self.budget = wl, base, ctx, space, budget
        self.max_drop = settings["max_drop"]
        self.objective = settings["objective"]
        self.baseline, self.trials, self.seed = baseline, trials, seed
        self.latency_runs, self.recover_limit = latency_runs, recover_limit

    # -- bookkeeping ------------------------------------------------------------------------------

    def room(self, study: Any, *, current: int = 0) -> int:
        """How many more points the trial count can still run: ``trials`` less the trials complete or pruned,
        running (less ``current``: running trials that will not count, e.g. a duplicate) and queued."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        running = sum(t.state == TrialState.RUNNING for t in trials) - current
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        return max(0, self.trials - completed_trials(trials) - running - waiting)

    def _enqueue_new(self, study: Any, points: Sequence[dict[str, Any]], origin: str, limit: int) -> int:
        """Queue up to ``limit`` of ``points`` that no trial has (evaluated, running, queued or failed)."""
        tried = {point_key(t.system_attrs.get("fixed_params") or t.params) for t in study.get_trials(deepcopy=False)}
        queued = 0
        for point in points:
            if queued >= limit:
                break
            if point_key(point) not in tried:
                tried.add(point_key(point))
                study.enqueue_trial(point, user_attrs={"origin": origin})
                queued += 1
        return queued

    def _refine(self, study: Any, number: int, params: dict[str, Any], *, feasible: bool, drop: float) -> None:
        """Queue the neighbours worth a trial after trial ``number`` (not cut short; see the module docstring),
        no more than the trial count can still run (:meth:`room`): a finished run leaves no queued points.
        ``drop``: the judged bound."""
        limit = min(REFINE_MOVES, self.room(study))
        if limit <= 0:
            return
        if feasible:
            moves = self.space.neighbours(params)["compress"]
            self._enqueue_new(study, moves, f"compress: trial {number}", limit)
        elif drop <= 2 * self.max_drop:
            moves = self.space.neighbours(params)["recover"]
            self._enqueue_new(study, moves, f"recover: trial {number}", limit)

    def resume_refinement(self, study: Any) -> None:
        """On a resumed study with room and nothing queued, queue the refinement of its best feasible trial.

        The refinement is capped to the trial count (:meth:`_refine`), so a run that was given more trials
        continues the local search where the last run had to stop; a point already tried or queued is never
        queued again.
        """
        from optuna.trial import TrialState

        from torchslim.tuning.report import objective_key

        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return  # the queued points run first
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible")]
        rows = [t.user_attrs | {"number": t.number, "params": t.params} for t in done if "quality" in t.user_attrs]
        if rows:
            best = min(rows, key=objective_key(self.objective, self.baseline))
            self._refine(study, best["number"], best["params"], feasible=True, drop=best.get("drop_bound", 0.0))

    def _random_point(self, salt: int) -> dict[str, Any]:
        """A point drawn uniformly from the space (the parameters as Optuna names them)."""
        import optuna

        scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=self.seed * 100_003 + salt))
        t = scratch.ask()
        self.space.suggest(t)
        return dict(t.params)

    def _values(self, size: int, latency: float) -> tuple[float, ...]:
        return {"size": (float(size),), "latency": (latency,), "both": (float(size), latency)}[self.objective]

    def _dominated(self, trial: Any, size: int, latency: float) -> str | None:
        """Why a (size, latency) cannot improve on the feasible trials so far, or None."""
        from optuna.trial import TrialState

        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if not t.user_attrs.get("feasible"):
                continue
            s, lat = t.user_attrs["size_bytes"], t.user_attrs["latency_ms"]
            size_worse = size >= s
            lat_worse = latency >= lat * (1 + LATENCY_SLACK)
            if (self.objective == "size" and size_worse) or (self.objective == "latency" and lat_worse):
                return f"cannot beat feasible trial {t.number}"
            if self.objective == "both" and size_worse and lat_worse:
                return f"dominated by feasible trial {t.number}"
        return None

    # -- confirmation -----------------------------------------------------------------------------

    def confirm(self, study: Any, limit: int, status: Callable[[str], None] = lambda _: None) -> dict[str, dict]:
        """Confirm the best feasible trials with another seed (see the module docstring); the confirmations.

        Returns ``{str(trial number): {"confirmed": bool, "mean_drop", ...}}``, also stored as the study's
        user attribute ``confirmations`` (a resumed study does not rebuild a trial twice).
        """
        from optuna.trial import TrialState

        from torchslim.tuning.report import objective_key

        done: dict[str, dict] = dict(study.user_attrs.get("confirmations", {}))
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        feasible = [t.user_attrs | {"number": t.number} for t in trials if t.user_attrs.get("feasible")]
        feasible = [r for r in feasible if "quality" in r and "point" in r]
        rebuilt = 0
        for row in sorted(feasible, key=objective_key(self.objective, self.baseline)):
            key = str(row["number"])
            if key not in done:
                if self.space.plan(row["point"])[1] is None:
                    done[key] = {"confirmed": True, "mean_drop": row["drop"], "how": "no training step"}
                elif rebuilt >= limit:
                    break
                else:
                    rebuilt += 1
                    status(f"confirming trial {key} with another seed")
                    done[key] = self._confirm_one(row)
                study.set_user_attr("confirmations", done)
            if done[key]["confirmed"]:
                break
        return done

    def _confirm_one(self, row: dict[str, Any]) -> dict[str, Any]:
        seed = self.seed + CONFIRM_SEED_OFFSET
        _, full = self.space.plan(row["point"])
        try:
            _, m = self._run(full, row["number"], reseeded_context(self.wl, self.ctx, seed))
        except (TorchslimError, RuntimeError, ValueError) as e:
            return {"confirmed": False, "how": f"rebuild failed: {type(e).__name__}: {e}"[:300], "confirm_seed": seed}
        bound = (row.get("drop_bound", row["drop"]) + m["drop_bound"]) / 2
        return {
            "confirmed": bool(bound <= self.max_drop + 1e-12),
            "how": f"rebuilt with seed {seed}",
            "confirm_seed": seed,
            "confirm_quality": m["quality"],
            "confirm_drop": m["drop"],
            "confirm_drop_se": m["drop_se"],
            "mean_drop": (row["drop"] + m["drop"]) / 2,
            "mean_bound": bound,
        }

    # -- one trial --------------------------------------------------------------------------------

    def _run(self, steps: list[dict], number: int, ctx: Any = None, *, quality: bool = True,
             monitor: DistillMonitor | None = None) -> tuple[torch.nn.Module, dict[str, float]]:  # fmt: skip
        from torchslim.measure import artifact_bytes, relative_latency
        from torchslim.recipes import recipe_from_dict, run_recipe

        recipe = recipe_from_dict({"name": f"trial-{number}", "seed": self.seed, "steps": steps})
        ctx = ctx if ctx is not None else fresh_context(self.wl, self.ctx)
        if monitor is not None:  # the same model as run_recipe; may raise TrialPruned during distillation
            model = run_monitored(copy.deepcopy(self.base), recipe, ctx, monitor)
        else:
            model, _ = run_recipe(copy.deepcopy(self.base), recipe, ctx, measure_steps=False)
        model.eval()
        lat = relative_latency(
            model, self.base, self.ctx.example_inputs, self.baseline["latency_ms"], self.latency_runs
        )
        m = {"size_bytes": artifact_bytes(model)} | lat
        return model, m | (self.budget.judge(model).attrs() if quality else {})

    def __call__(self, trial: Any) -> tuple[float, ...]:
        import optuna

        record_worker(trial)
        wait_turn(trial, self.trials)
        yield_to_retry(trial)
        params = self.space.suggest(trial)
        dup = duplicate_of(trial)
        if dup is not None:
            trial.set_user_attr("duplicate_of", dup)
            # TPE keeps proposing its favourite point once it has converged: queue a point next to it
            # (or a random one), so the trial this one gives up is spent exploring instead of failing again.
            # Only while the count has room for it (this trial does not count): no queued point is left over.
            moves = self.space.neighbours(trial.params)
            origin = f"instead of duplicate trial {trial.number}"
            if self.room(trial.study, current=1) > 0 and not self._enqueue_new(
                trial.study, [p for m in MOVES for p in moves[m]], origin, 1
            ):
                random = self._random_point(trial.number)
                self._enqueue_new(trial.study, [random], f"random, {origin}", 1)
            raise Skip(f"duplicate of trial {dup}")
        trial.set_user_attr("description", getattr(self.space, "describe", describe_point)(params))
        trial.set_user_attr("point", params)  # the recipe's inputs (``trial.params`` names some differently)
        quick, full = self.space.plan(params)
        # The composed space's quick model has dropped blocks without distillation: its quality says nothing
        # about the trial; its distill steps are watched instead (DistillMonitor).
        monitored = getattr(self.space, "monitors_training", False)
        start = time.perf_counter()
        try:
            model, m = self._run(quick, trial.number, quality=False)
            reason = self._dominated(trial, m["size_bytes"], m["latency_ms"])
            if reason is None:  # a trial cut short needs no quality: the evaluation is skipped
                m |= self.budget.judge(model).attrs()
                trial.set_user_attr("quick_quality", m["quality"])
            del model
            if reason is None and full is not None:
                drop = m["drop"]
                if self.recover_limit is not None and drop > self.recover_limit and not monitored:
                    reason = f"quality drop {drop:.4g} before recovery exceeds recover_limit {self.recover_limit:g}"
                if len(self._values(0, 0.0)) == 1:
                    trial.report(drop, 0)  # intermediate value: quality drop before recovery
            if reason is not None:
                trial.set_user_attr("prune_reason", reason)
                _set_speed(trial, m)
                if reason.startswith(("cannot beat", "dominated")):
                    # Cut short, but its objective is known exactly (training changes neither size nor
                    # speed): told to the sampler as a complete trial, so it learns where the small/fast
                    # points are. Never chosen as best (no ``quality``); constraint 0 = not known to fail.
                    trial.set_user_attr("cut_short", True)
                    if hasattr(trial, "set_constraint"):
                        trial.set_constraint("quality_drop", 0.0)
                    trial.set_user_attr("constraint", [0.0])
                    return self._values(m["size_bytes"], m["latency_ms"])
                raise optuna.TrialPruned(reason)
            if full is not None:
                monitor = DistillMonitor(trial, self.budget, self.recover_limit) if monitored else None
                try:
                    _, m = self._run(full, trial.number, monitor=monitor)
                except optuna.TrialPruned:  # by the monitor: size and latency are the quick model's
                    _set_speed(trial, m)
                    raise
        except (TorchslimError, RuntimeError, ValueError) as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            raise Skip(str(e)) from e
        trial.set_user_attr("seconds", time.perf_counter() - start)
        for k, v in m.items():  # quality, drop, drop_se, drop_bound, feasible (the Budget's judgement), size, latency
            trial.set_user_attr(k, v)
        excess = m["drop_bound"] - self.max_drop
        trial.set_user_attr("constraint", [excess])
        if hasattr(trial, "set_constraint"):
            trial.set_constraint("quality_drop", excess)
        # Not cut short: smaller/faster than every feasible trial so far (training changes neither).
        self._refine(trial.study, trial.number, trial.params, feasible=m["feasible"], drop=m["drop_bound"])
        return self._values(m["size_bytes"], m["latency_ms"])


def _set_speed(trial: Any, m: dict[str, Any]) -> None:
    """Store a trial's size and latency figures (those of :func:`~torchslim.measure.relative_latency`) as user
    attributes."""
    for key in ("size_bytes", *SPEED_KEYS):
        if key in m:
            trial.set_user_attr(key, m[key])


def _evaluate_builtins(wl: Any, base: torch.nn.Module, ctx: Any, names: Sequence[str] | None, latency_runs: int,
                       budget: Budget, progress: Callable[[str], None], baseline_ms: float) -> list[dict]:  # fmt: skip
    """Rows for the built-in recipes (val + test quality, size, latency relative to the baseline whose start
    latency is ``baseline_ms``, as trials are: :func:`~torchslim.measure.relative_latency`); those that fail
    are noted."""
    from torchslim.measure import artifact_bytes, relative_latency
    from torchslim.recipes import builtin_recipes, run_recipe

    if names is not None and not names:
        return []
    recipes = builtin_recipes()
    rows = []
    if names is None:  # all but the torch.compile ones: minutes of compiling for a comparison point
        names = [n for n, r in recipes.items() if not any(getattr(st.config, "compile", False) for st in r.steps)]
    for name in names:
        if name not in recipes:
            raise UsageError(f"no built-in recipe {name!r}; built-ins: {', '.join(recipes)}")
        progress(f"built-in {name}")
        try:
            model, _ = run_recipe(copy.deepcopy(base), recipes[name], fresh_context(wl, ctx), measure_steps=False)
        except (TorchslimError, RuntimeError, ValueError) as e:
            rows.append({"name": name, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        model.eval()
        rows.append(
            {
                "name": name,
                "size_bytes": artifact_bytes(model),
                **relative_latency(model, base, ctx.example_inputs, baseline_ms, latency_runs),
                **budget.judge(model).attrs(),
                "test_quality": float(wl.evaluate(model, "test")[wl.metric]),
            }
        )
    return rows


def tune(workload: str | Any, options: TuneOptions, *, model: torch.nn.Module | None = None) -> TuneResult:
    """Search recipes for ``workload`` that keep its metric within ``options.max_drop`` and minimise
    ``options.objective`` (see the module docstring and :class:`TuneOptions`).

    Args:
        workload: a built-in workload name or a :class:`~torchslim.workloads.Workload`.
        options: what to search for and how, validated when built.
        model: the baseline model (put in eval mode), e.g. one already built for the memory preflight;
            ``None``: ``workload.model()`` builds it.

    Returns:
        A :class:`TuneResult`; the outputs are written to ``options.out``.

    Raises:
        UsageError: unknown workload or built-in recipe. ConfigError: a stored study created with other
        settings. OutputExistsError: ``out`` cannot be written.
    """
    import optuna

    from torchslim.tuning.report import write_outputs
    from torchslim.workloads import get_workload

    if not isinstance(options, TuneOptions):
        raise UsageError(f"tune(workload, options): options must be a TuneOptions, got {type(options).__name__}")
    o = options
    max_drop, objective, trials, seed, worker, space = o.max_drop, o.objective, o.trials, o.seed, o.worker, o.space
    latency_runs, builtins, confirm, margin = o.latency_runs, o.builtins, o.confirm, o.margin
    out = Path(o.out)
    _mkdir(out)
    wl = get_workload(workload, data=o.data) if isinstance(workload, str) else workload
    old_threads = torch.get_num_threads()
    old_verbosity = optuna.logging.get_verbosity()
    torch.set_num_threads(o.threads)
    # Discarded duplicates and surplus trials are FAIL records by design; optuna would warn for each.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        base = (wl.model() if model is None else model).eval()
        ctx = dataclasses.replace(wl.context(seed=seed), eval_fn=None)
        if space is None and o.composed:
            space = _composed_space(wl, base, ctx)
        if space is None:  # the workload may shape its default space (e.g. post-training only)
            overrides = dict(getattr(wl, "tune_space_overrides", dict)())
            space = SearchSpace.for_model(base, has_train_data=ctx.train_data is not None, **overrides)
        settings = study_settings(wl.name, wl.metric, float(max_drop), objective, space, seed) | {
            "margin": float(margin)
        }
        with progress_task(trials, f"tune {wl.name}", unit="trials", enabled=o.progress) as bar:

            def phase(text: str) -> None:  # a stage of the run: on the bar, and a line in logs
                bar.update(status=text)
                bar.note(f"tune {wl.name}: {text}")

            phase("measuring the baseline")
            budget = Budget(wl, base, max_drop=float(max_drop), margin=float(margin))
            baseline = _baseline(wl, base, ctx, latency_runs, budget)
            url = o.storage or default_storage(out)
            directions = ["minimize"] * (2 if objective == "both" else 1)
            with warnings.catch_warnings():  # heartbeats and grouped TPE are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # On PostgreSQL this block holds the workers' start-up lock: one at a time creates or loads
                # the study, checks its settings and queues the anchors.
                with shared_storage(url, o.heartbeat_interval, o.grace_period) as storage:
                    study = load_study(
                        storage, STUDY_NAME, directions, make_sampler(objective, seed + 1000 * worker, trials)
                    )
                    check_settings(study, settings)
                    if not study.trials and o.anchors:
                        for origin, point in space.named_anchors()[:trials]:
                            study.enqueue_trial(point, skip_if_exists=True, user_attrs={"origin": origin})
                    if len(study.trials):  # a resumed study: new suggestions, not the first run's again
                        study.sampler = make_sampler(objective, seed + 1000 * worker + 7919 * len(study.trials), trials)
            fn = _Objective(wl=wl, base=base, ctx=ctx, space=space, settings=settings, budget=budget, baseline=baseline,
                            trials=trials, seed=seed, latency_runs=latency_runs, recover_limit=o.recover_limit)  # fmt: skip
            for name, point in _start_points(space, o.start):  # after the anchors; never a point tried before
                fn._enqueue_new(study, [point], f"start:{name}", 1)
            done = completed_trials(study.get_trials(deepcopy=False))  # a resumed study may have enough
            bar.update(completed=min(done, trials))
            if done < trials:
                fn.resume_refinement(study)
                phase("searching")
                optimize(study, fn, Stop(trials, bar), bar)
            if confirm:
                fn.confirm(study, confirm, phase)
            rows = _evaluate_builtins(wl, base, ctx, builtins, latency_runs, budget, phase, baseline["latency_ms"])
            phase("writing outputs")
            result = write_outputs(study, wl=wl, base=base, ctx=ctx, space=space, settings=settings,
                                   baseline=baseline, builtins=rows, out=out, peers=o.peers)  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)
        optuna.logging.set_verbosity(old_verbosity)
    return result


def _composed_space(wl: Any, base: torch.nn.Module, ctx: Any) -> ComposedSpace:
    """The composed space of ``base``, holding the built-in recipes' points; refused without training data."""
    from torchslim.errors import ConfigError
    from torchslim.recipes import builtin_recipes

    if ctx.train_data is None:
        raise ConfigError(f"the composed space distils: workload {wl.name!r} gives no training data (train_data)")
    return ComposedSpace.for_model(base, recipes=builtin_recipes().values())


def _start_points(space: Any, names: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, point)`` of each ``--start`` recipe; a recipe the space does not hold is a ConfigError (exit 3)."""
    from torchslim.errors import ConfigError
    from torchslim.recipes import load_recipe

    out = []
    for name in names:
        point = space.point_of(load_recipe(name))
        if point is None:
            raise ConfigError(f"--start {name}: the recipe is not a point of the composed search space")
        out.append((name, point))
    return out


def _mkdir(out: Path) -> None:
    from torchslim.errors import OutputExistsError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputExistsError(f"cannot create {out}: {e}") from None


def _baseline(wl: Any, base: torch.nn.Module, ctx: Any, latency_runs: int, budget: Budget) -> dict[str, Any]:
    from torchslim.measure import artifact_bytes, measure_latency

    return {
        "quality": budget.base_quality,
        "budget_rule": budget.describe(),
        "test_quality": float(wl.evaluate(base, "test")[wl.metric]),
        "size_bytes": artifact_bytes(base),
        "latency_ms": measure_latency(base, ctx.example_inputs, warmup=3, runs=latency_runs).median_ms,
    }
