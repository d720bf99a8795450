"""The outputs of ``torchslim tune``: trial rows, the best feasible recipe as YAML, the Pareto PNG, a Markdown report.

Example:
    >>> pareto_front([{"size_bytes": 1, "latency_ms": 2.0}, {"size_bytes": 2, "latency_ms": 1.0},
    ...               {"size_bytes": 3, "latency_ms": 3.0}])
    [{'size_bytes': 1, 'latency_ms': 2.0}, {'size_bytes': 2, 'latency_ms': 1.0}]
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchslim.io.atomic import atomic_file
from torchslim.tuning.space import SearchSpace

__all__ = ["objective_key", "pareto_front", "trial_rows", "write_outputs", "write_text"]


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (:func:`torchslim.io.atomic.atomic_file`); OutputExistsError on I/O errors."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state, params, description, the measured user attributes and the
    trial's confirmation (``confirmed``, ``mean_drop``, ... when ``tune`` confirmed it)."""
    confirmations = study.user_attrs.get("confirmations", {})
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "params": dict(t.params)}
        row.update({k: v for k, v in t.user_attrs.items() if k != "constraint"})
        row.update(confirmations.get(str(t.number), {}))
        if t.values is not None:
            row["values"] = list(t.values)
        rows.append(row)
    return rows


def pareto_front(rows: Sequence[dict[str, Any]], keys: Sequence[str] = ("size_bytes", "latency_ms")) -> list[dict]:
    """The rows no other row beats on every key (all minimised), in the input order."""

    def dominates(a: dict, b: dict) -> bool:
        return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def _kb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e3:.1f}"


def _q(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _speedup(r: dict[str, Any]) -> str:
    """The measured speedup over the baseline (``2.31x``), ``-`` for a row measured without it.

    Example:
        >>> _speedup({"speedup": 2.3127}), _speedup({})
        ('2.31x', '-')
    """
    v = r.get("speedup")
    return "-" if v is None else f"{v:.2f}x"


def objective_key(objective: str, baseline: dict[str, Any]) -> Any:
    """Sort key of feasible rows, best first: size then latency, latency then size, or (``both``) the sum of
    size and latency relative to the baseline (the point of the front handed out as ``best.yaml``).

    Example:
        >>> rows = [{"size_bytes": 2, "latency_ms": 1.0}, {"size_bytes": 1, "latency_ms": 3.0}]
        >>> [r["size_bytes"] for r in sorted(rows, key=objective_key("size", {}))]
        [1, 2]
    """
    if objective == "size":
        return lambda r: (r["size_bytes"], r["latency_ms"])
    if objective == "latency":
        return lambda r: (r["latency_ms"], r["size_bytes"])
    return lambda r: r["size_bytes"] / baseline["size_bytes"] + r["latency_ms"] / baseline["latency_ms"]


def _chosen(feasible: list[dict], objective: str, baseline: dict) -> tuple[list[dict], dict | None]:
    # A trial whose confirmation run pulled its mean drop over the budget is not handed out.
    feasible = [r for r in feasible if r.get("confirmed") is not False]
    if not feasible:
        return [], None
    best = min(feasible, key=objective_key(objective, baseline))
    if objective != "both":
        return [best], best
    return sorted(pareto_front(feasible), key=lambda r: r["size_bytes"]), best


def _rerun_on_test(chosen: dict, space: SearchSpace, settings: dict, wl: Any, base: Any, ctx: Any) -> Any:
    """Run the chosen recipe again (seeded, so the same model) and score it on the test split."""
    from torchslim.recipes import run_recipe

    recipe = space.recipe(
        chosen.get("point", chosen["params"]),
        name=f"tuned-{settings['workload']}-{settings['objective']}",
        description=(
            f"torchslim tune: {chosen.get('description', '')} (trial {chosen['number']}; {settings['metric']} "
            f"drop {chosen['drop']:.4g} <= {settings['max_drop']:g} on the validation split)"
        ),
        seed=settings["seed"],
    )
    from torchslim.tuning.study import fresh_context

    model, _ = run_recipe(copy.deepcopy(base), recipe, fresh_context(wl, ctx), measure_steps=False)
    chosen["test_quality"] = float(wl.evaluate(model.eval(), "test")[wl.metric])
    # Seeded recipes rebuild the trial's model; a difference (a nondeterministic kernel, shuffling that
    # depends on earlier trials) is reported rather than hidden.
    chosen["rerun_quality"] = float(wl.evaluate(model, getattr(wl, "selection_split", "val"))[wl.metric])
    return recipe


def _peers(path: str | Path | None, metric: str) -> list[dict[str, Any]]:
    """The ``peer-*`` rows of a benchmark JSON (``tune --peers``) as reference points for the chart.

    Raises:
        UnsafeInputError: an unreadable file, not JSON (or nested too deeply), no list of ``rows``, a row that
            is not an object with a ``variant`` name, or a peer whose size, latency or quality is not a finite
            number.
    """
    if path is None:
        return []
    from torchslim.errors import UnsafeInputError

    def bad(why: str) -> UnsafeInputError:
        return UnsafeInputError(f"--peers {path}: not a benchmark JSON with rows ({why[:200]})")

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except RecursionError:
        raise bad("nested too deeply") from None
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise bad(str(e)) from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise bad("no list of rows")
    peers = []
    for r in rows:
        if not isinstance(r, dict) or not isinstance(r.get("variant"), str):
            raise bad(f"a row without a variant name: {str(r)[:80]}")
        quality = r.get("quality", {})
        if not isinstance(quality, dict):
            raise bad(f"{r['variant'][:80]}: quality is not an object")
        if not r["variant"].startswith("peer-") or r.get("size_mb") is None or metric not in quality:
            continue
        values = {"size_mb": r["size_mb"], "latency_ms": r.get("latency_ms"), metric: quality[metric]}
        for key, v in values.items():
            # NaN fails the comparison; an integer beyond float range cannot be drawn
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= 1e300:
                raise bad(f"{r['variant'][:80]}: {key} is {str(v)[:40]}, not a finite number")
        peers.append({"name": r["variant"], "kind": "peer", "size_bytes": float(r["size_mb"]) * 1e6,
                      "latency_ms": float(r["latency_ms"]), "quality": float(quality[metric])})  # fmt: skip
    return peers


def write_outputs(
    study: Any,
    *,
    wl: Any,
    base: Any,
    ctx: Any,
    space: SearchSpace,
    settings: dict[str, Any],
    baseline: dict[str, Any],
    builtins: list[dict[str, Any]],
    out: Path,
    peers: str | Path | None = None,
) -> Any:
    """Write ``best.yaml`` (when a trial is feasible), ``pareto.png``, ``report.md``, ``trials.json``; a TuneResult."""
    from torchslim.tuning.plots import pareto_chart
    from torchslim.tuning.study import TuneResult, completed_trials

    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "COMPLETE" and "quality" in r]
    feasible = [r for r in complete if r.get("feasible")]
    best, chosen = _chosen(feasible, settings["objective"], baseline)
    paths: dict[str, Path] = {}
    recipe = None
    if chosen is not None:
        recipe = _rerun_on_test(chosen, space, settings, wl, base, ctx)
        paths["best"] = out / "best.yaml"
        write_text(paths["best"], recipe.to_yaml())
    sign = -1 if wl.higher_is_better else 1
    paths["pareto"] = out / "pareto.png"
    refs = [dict(b, kind="builtin") for b in builtins if "quality" in b] + _peers(peers, wl.metric)
    pareto_chart(
        paths["pareto"],
        trials=complete,
        front=best if settings["objective"] == "both" else pareto_front(feasible),
        references=refs,
        baseline=baseline,
        metric=f"{wl.metric} (validation)",
        budget=baseline["quality"] + sign * settings["max_drop"],
        higher_is_better=wl.higher_is_better,
        title=f"torchslim tune {settings['workload']}: objective {settings['objective']}, "
        f"max drop {settings['max_drop']:g}, {len(complete)} evaluated trials",
    )
    result = TuneResult(
        study, completed_trials(study.get_trials(deepcopy=False)), baseline, best, chosen, builtins, paths
    )
    paths["report"] = out / "report.md"
    write_text(paths["report"], to_markdown(result, settings, rows, recipe))
    paths["trials"] = out / "trials.json"
    data = {"settings": settings, "baseline": baseline, "chosen": chosen, "best": best, "builtins": builtins}
    write_text(paths["trials"], json.dumps({**data, "trials": rows}, indent=2, default=str) + "\n")
    return result


def compare_builtins(chosen: dict | None, builtins: Sequence[dict], objective: str) -> str:
    """One sentence: how the tuned recipe compares with the best built-in recipe within the same budget.

    Example:
        >>> compare_builtins({"size_bytes": 10, "latency_ms": 1.0},
        ...                  [{"name": "a", "size_bytes": 40, "latency_ms": 2.0, "feasible": True}], "size")
        'tuned: 4.0x smaller and 2.0x faster than the smallest built-in within budget (a).'
        >>> compare_builtins({"size_bytes": 10, "latency_ms": 1.0}, [], "size")
        'no built-in recipe was compared (--builtins none).'
    """
    ok = [b for b in builtins if b.get("feasible")]
    if chosen is None:
        return "no trial met the budget."
    if not builtins:
        return "no built-in recipe was compared (--builtins none)."
    if not ok:
        return "no built-in recipe meets the budget."
    key = "latency_ms" if objective == "latency" else "size_bytes"
    ref = min(ok, key=lambda b: b[key])
    what = "fastest" if key == "latency_ms" else "smallest"
    return (
        f"tuned: {ref['size_bytes'] / chosen['size_bytes']:.1f}x smaller and "
        f"{ref['latency_ms'] / chosen['latency_ms']:.1f}x faster than the {what} built-in within budget ({ref['name']})."
    )


def to_markdown(result: Any, settings: dict[str, Any], rows: list[dict], recipe: Any) -> str:
    """The report: settings, baseline, the chosen recipe, the front, the built-ins, trial counts."""
    s, b = settings, result.baseline
    states: dict[str, int] = {}
    for r in rows:
        key = r["state"] + (" (duplicate)" if "duplicate_of" in r else "") + (" (surplus)" if r.get("surplus") else "")
        key += " (cut short: cannot improve)" if r.get("cut_short") else ""
        states[key] = states.get(key, 0) + 1
    lines = [
        f"# torchslim tune: {s['workload']}",
        "",
        f"Objective **{s['objective']}**, budget on {s['metric']} over the validation split: "
        f"{b.get('budget_rule') or 'drop <= {:g}'.format(s['max_drop'])} "
        f"(baseline {b['quality']:.4f}; test {b['test_quality']:.4f}; {_kb(b['size_bytes'])} KB; "
        f"{b['latency_ms']:.3f} ms).",
        "",
        "Latency: the baseline's, measured at the start, divided by the model's speedup; speedup: the "
        "baseline's median time over the model's, both timed round-robin in one run, so a change of the "
        "machine's load does not move either (the raw medians are in `trials.json`).",
        "",
        f"Trials: {', '.join(f'{v} {k}' for k, v in sorted(states.items()))}.",
        "",
        "![pareto](pareto.png)",
        "",
    ]
    c = result.chosen
    if c is None:
        lines += ["No trial met the budget: no `best.yaml` written. Try more trials or a larger `--max-drop`.", ""]
    else:
        lines += [
            f"## Best: trial {c['number']} — {c.get('description', '')}",
            "",
            f"{_kb(c['size_bytes'])} KB ({b['size_bytes'] / c['size_bytes']:.1f}x smaller), {c['latency_ms']:.3f} ms "
            f"({c.get('speedup', b['latency_ms'] / c['latency_ms']):.2f}x faster), "
            f"{s['metric']} {c['quality']:.4f} validation "
            f"(drop {_drop_cell(c)}), {c['test_quality']:.4f} test (drop {b['test_quality'] - c['test_quality']:.4f}).",
            "",
            compare_builtins(c, result.builtins, s["objective"]),
            "",
            _confirmation_line(c, s["max_drop"]),
            "",
            f"Rebuilt from `best.yaml`, validation {s['metric']} is {c['rerun_quality']:.4f} "
            f"(in the trial {c['quality']:.4f}).",
            "",
            f"Run it: `torchslim compress --workload {s['workload']} --recipe best.yaml --out out/tuned`",
            "",
            "```yaml",
            recipe.to_yaml().rstrip(),
            "```",
            "",
        ]
    if result.best:
        lines += ["## Feasible front" if s["objective"] == "both" else "## Best feasible trial", ""]
        lines += _table(result.best, with_test=False)
    if result.builtins:
        lines += ["", "## Built-in recipes, same budget", ""]
        lines += [
            "| recipe | size KB | latency ms | speedup | val | test | drop | within budget |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result.builtins:
            if "error" in r:
                lines.append(f"| {r['name']} | - | - | - | - | - | - | error: {r['error'][:80]} |")
                continue
            lines.append(
                f"| {r['name']} | {_kb(r['size_bytes'])} | {r['latency_ms']:.3f} | {_speedup(r)} | "
                f"{_q(r['quality'])} | "
                f"{_q(r['test_quality'])} | {_drop_cell(r)} | {'yes' if r['feasible'] else 'no'} |"
            )
    examined = [r for r in rows if "confirmed" in r and r.get("how") != "no training step"]
    if examined:
        lines += ["", "## Confirmation: best feasible trials rebuilt with another seed", ""]
        lines += [
            "| trial | recipe | size KB | val drop | confirmation drop | mean judged drop | kept |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in examined:
            confirm = {"drop": r.get("confirm_drop", float("nan")), "drop_se": r.get("confirm_drop_se")}
            lines.append(
                f"| {r['number']} | {r.get('description', '')} | {_kb(r.get('size_bytes'))} | {_drop_cell(r)} | "
                f"{_drop_cell(confirm)} | {r.get('mean_bound', r.get('mean_drop', float('nan'))):.4f} | "
                f"{'yes' if r['confirmed'] else 'no'} |"
            )
    done = sorted(
        (r for r in rows if r["state"] == "COMPLETE" and "quality" in r),
        key=lambda r: (not r.get("feasible"), r.get("size_bytes", 0)),
    )
    lines += ["", "## Evaluated trials (within budget first, by size)", ""]
    lines += _table(done[:30], with_test=False)
    return "\n".join(lines) + "\n"


def _confirmation_line(c: dict[str, Any], max_drop: float) -> str:
    """How the chosen trial was confirmed (see ``tune``'s ``confirm``)."""
    if "confirmed" not in c:
        return "Not confirmed with another seed (confirmation off, or the rebuilds of the trials before it all failed)."
    if c.get("how") == "no training step":
        return "No training step: the same model with any seed (confirmation not needed)."
    judged = c.get("mean_bound", c["mean_drop"])
    return (
        f"Confirmed: {c['how']}, validation drop {c['confirm_drop']:.4f}; mean of both runs {c['mean_drop']:.4f} "
        f"(judged, with the margin: {judged:.4f}) <= {max_drop:g}."
    )


def _drop_cell(r: dict[str, Any]) -> str:
    """``0.0083 ± 0.0071`` (drop and its standard error) or the drop alone when it has none.

    Example:
        >>> _drop_cell({"drop": 0.0083, "drop_se": 0.00714}), _drop_cell({"drop": 0.5})
        ('0.0083 ± 0.0071', '0.5000')
    """
    se = r.get("drop_se")
    return f"{r.get('drop', float('nan')):.4f}" + (f" ± {se:.4f}" if se is not None else "")


def _table(rows: Sequence[dict], with_test: bool) -> list[str]:
    out = [
        "| trial | recipe | size KB | latency ms | speedup | val | drop | within budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['number']} | {r.get('description', '')} | {_kb(r.get('size_bytes'))} | "
            f"{r.get('latency_ms', float('nan')):.3f} | {_speedup(r)} | {_q(r.get('quality'))} | {_drop_cell(r)} | "
            f"{'yes' if r.get('feasible') else 'no'} |"
        )
    return out
