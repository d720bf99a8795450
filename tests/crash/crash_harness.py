"""The SIGKILL harness: run real ``torchslim`` CLI processes, kill them at seeded random moments, check what is left.

Each command is first run once uninterrupted (its duration and its reference result). Then, in one
working folder, the same kind of command is started again and again and killed (``SIGKILL``) at a
moment drawn by a seeded RNG: every other kill uniformly over the uninterrupted run's duration, the
others within 50 ms after the command began writing (a ``.torchslim-tmp-*`` appeared), since start-up
takes most of a short run. After every kill the output must be
absent, the previous complete output byte for byte, or a new complete one (checked by loading it:
``ts.load`` verifies an artifact's manifest; a ``.pt2`` is reloaded and run), and nothing may be left
where the user looks but the hidden ``.torchslim-*`` temporaries and lock files, which the next
complete run must remove. ``distill`` and ``tune`` are resumed with the same command after their kills
and must reach the uninterrupted run's result: bit-identical student weights, the same set of trials
(same parameters, no point counted twice).

The children run with one thread (``OMP_NUM_THREADS=1``) on the tiny workload in ``crashmod.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HIDDEN = ".torchslim-"
WORKLOAD = ["--workload", "crashmod:Tiny"]
TUNE_TRIALS = 4  # within the anchors a new study queues first: the trial set is fixed, not sampled


def child_env() -> dict[str, str]:
    """The children's environment: ``crashmod`` importable, one thread, no network."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    return env


def torchslim(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchslim", *args]


def run(argv: list[str], cwd: Path) -> float:
    """Run ``argv`` to its end in ``cwd``; its wall time. AssertionError (with stderr) when it fails."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(argv[2:])} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return time.perf_counter() - start


def run_killed(argv: list[str], cwd: Path, delay: float, armed: Callable[[], bool] | None = None) -> bool:
    """Start ``argv`` and SIGKILL it ``delay`` seconds after its start, or, with ``armed``, ``delay`` seconds
    after ``armed()`` first holds (polled every 2 ms: e.g. a temporary file appeared). True when it was
    killed, False when it had ended first."""
    proc = subprocess.Popen(argv, cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if armed is not None:
        while proc.poll() is None and not armed():
            time.sleep(0.002)
    try:
        _, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return True
    assert proc.returncode == 0, f"{' '.join(argv[2:])} exited {proc.returncode}:\n{err.decode()[-3000:]}"
    return False


def writing(*folders: Path) -> Callable[[], bool]:
    """True once a torchslim temporary (``.torchslim-tmp-*``) exists in one of ``folders``."""
    return lambda: any(f.is_dir() and any(f.glob(HIDDEN + "tmp-*")) for f in folders)


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under ``path`` (a folder or one file) by relative name, or None when it does not exist."""
    if path.is_file():
        return {"": path.read_bytes()}
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def visible_leftovers(folder: Path, expected: set[str]) -> list[str]:
    """Names in ``folder`` the user would see that are neither expected nor hidden torchslim temporaries."""
    return sorted(p.name for p in folder.iterdir() if p.name not in expected and not p.name.startswith(HIDDEN))


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(HIDDEN))


@dataclass
class Tally:
    """What a campaign saw, per command."""

    kills: Counter = field(default_factory=Counter)  # killed before the end
    finished: Counter = field(default_factory=Counter)  # ended before its kill moment (not counted as kills)
    outcomes: Counter = field(default_factory=Counter)  # (command, "absent" | "previous" | "new complete")
    resumes: Counter = field(default_factory=Counter)  # resumed chains that matched the uninterrupted run
    hidden_after_kill: Counter = field(default_factory=Counter)  # kills that left hidden temporaries
    findings: list[str] = field(default_factory=list)  # invariant violations (the test fails on any)
    durations: dict[str, float] = field(default_factory=dict)  # each command's uninterrupted run
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kills": dict(self.kills),
            "finished_before_kill": dict(self.finished),
            "outcomes": {f"{c}: {o}": n for (c, o), n in sorted(self.outcomes.items())},
            "resumes_matching": dict(self.resumes),
            "kills_leaving_hidden_temporaries": dict(self.hidden_after_kill),
            "findings": self.findings,
            "seconds": round(self.seconds, 1),
            "uninterrupted_seconds": {k: round(v, 1) for k, v in self.durations.items()},
        }


def merged(tallies: list[Tally]) -> Tally:
    """One tally of several campaigns (seconds: set by the caller)."""
    out = Tally()
    for t in tallies:
        for name in ("kills", "finished", "outcomes", "resumes", "hidden_after_kill"):
            getattr(out, name).update(getattr(t, name))
        out.findings += t.findings
        out.durations |= t.durations
    return out


class Campaign:
    """Kill ``compress``, ``export``, ``distill`` and ``tune`` in ``root`` with delays drawn from ``seed``."""

    def __init__(self, root: Path, seed: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.rng, self.tally = root, random.Random(seed), Tally()
        self.durations = self.tally.durations
        self.draws: Counter = Counter()

    def _moment(self, command: str, *folders: Path) -> tuple[float, Callable[[], bool] | None]:
        """Every other kill: a moment drawn over the whole uninterrupted duration; the others: up to 50 ms
        after a write has begun in ``folders`` (most of a short run is start-up, where nothing is written)."""
        self.draws[command] += 1
        if self.draws[command] % 2:
            return self.rng.uniform(0.0, self.durations[command]), None
        return self.rng.uniform(0.0, 0.05), writing(*folders)

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            self.tally.findings.append(message)

    def _kill(self, command: str, argv: list[str], work: Path, *folders: Path) -> bool:
        """Run ``argv`` in ``work`` and kill it at a moment drawn by :meth:`_moment` (armed on ``folders``);
        tally the kill, or the run that finished before it. True when it was killed."""
        killed = run_killed(argv, work, *self._moment(command, *folders))
        self.tally.kills[command] += killed
        self.tally.finished[command] += not killed
        return killed

    def _outcome(self, command: str, now: dict[str, bytes] | None, previous: dict[str, bytes] | None) -> str:
        """What a kill left at the output (``now``) against the snapshot before it, tallied:
        ``absent``, ``previous`` (byte for byte) or ``new complete`` (the caller checks that it is)."""
        outcome = "absent" if now is None else "previous" if now == previous else "new complete"
        self.tally.outcomes[command, outcome] += 1
        return outcome

    def _after_kill(self, command: str, folder: Path, expected: set[str]) -> None:
        extra = visible_leftovers(folder, expected)
        self._check(not extra, f"{command}: visible leftovers after a kill: {extra}")
        if hidden_leftovers(folder):
            self.tally.hidden_after_kill[command] += 1

    def _after_clean_run(self, command: str, folder: Path, expected: set[str]) -> None:
        extra = visible_leftovers(folder, expected)
        hidden = hidden_leftovers(folder)
        self._check(not extra and not hidden, f"{command}: left after a complete run: {extra + hidden}")

    # -- compress ------------------------------------------------------------------------------------

    def compress(self, kills: int) -> None:
        """Alternate recipes on one ``--out`` with ``--force``: after each kill the folder holds the
        previous artifact byte for byte, a complete new one (ts.load verifies it; its weights equal the
        first complete result of that recipe), or nothing."""
        work = self.root / "compress"
        work.mkdir()
        ref_argv = torchslim("compress", *WORKLOAD, "--recipe", "int8-dynamic", "--out", "ref")
        self.durations["compress"] = run(ref_argv, work)
        weights = {"int8-dynamic": (work / "ref" / "model.safetensors").read_bytes()}
        previous = None
        recipes = ("bf16", "int8-dynamic")
        for i in range(kills):
            recipe = recipes[i % 2]
            argv = torchslim("compress", *WORKLOAD, "--recipe", recipe, "--out", "out", "--force")
            self._kill("compress", argv, work, work)
            now = snapshot(work / "out")
            if self._outcome("compress", now, previous) == "new complete":
                problem = _artifact_problem(work / "out", recipe)
                self._check(problem is None, f"compress kill {i}: partial or wrong artifact: {problem}")
                got = now.get("model.safetensors")
                self._check(
                    weights.setdefault(recipe, got) == got, f"compress kill {i}: {recipe} weights differ from before"
                )
            self._after_kill("compress", work, {"ref", "out"})
            previous = now
        run(torchslim("compress", *WORKLOAD, "--recipe", "int8-dynamic", "--out", "out", "--force"), work)
        self._after_clean_run("compress", work, {"ref", "out"})

    # -- export --------------------------------------------------------------------------------------

    def export(self, kills: int) -> None:
        """``export ART --format pt2 --out model.pt2`` over the last one: after each kill the file is the
        previous one byte for byte, a new one that reloads and matches the artifact, or absent."""
        work = self.root / "export"
        work.mkdir()
        art = self.root / "compress" / "ref"  # compress's uninterrupted result
        if not art.is_dir():
            art = work / "art"
            run(torchslim("compress", *WORKLOAD, "--recipe", "int8-dynamic", "--out", "art"), work)
        argv = torchslim("export", str(art), *WORKLOAD, "--format", "pt2", "--out", "model.pt2")
        self.durations["export"] = run(argv, work)
        (work / "model.pt2").unlink()
        previous = None
        for i in range(kills):
            self._kill("export", argv, work, work)
            now = snapshot(work / "model.pt2")
            if self._outcome("export", now, previous) == "new complete":
                problem = _pt2_problem(work / "model.pt2", art)
                self._check(problem is None, f"export kill {i}: partial or wrong .pt2: {problem}")
            self._after_kill("export", work, {"art", "model.pt2"})
            previous = now
        run(argv, work)
        self._after_clean_run("export", work, {"art", "model.pt2"})

    # -- distill -------------------------------------------------------------------------------------

    @staticmethod
    def _distill_argv(out: str, ckpt: str) -> list[str]:
        # 8 steps per epoch, 3 epochs; checkpoints every 5 steps, so most resumes start mid-epoch.
        flags = ["--epochs", "3", "--checkpoint-every", "5", "--seed", "7", "--lr", "0.01"]
        return torchslim("distill", *WORKLOAD, "--student", "crashmod:student", *flags, "--checkpoint-dir", ckpt,
                         "--out", out, "--force")  # fmt: skip

    def distill(self, chains: int, kills_per_chain: int) -> None:
        """Each chain: kill the same ``distill --checkpoint-dir`` command ``kills_per_chain`` times, then let
        it finish; its student must be bit-identical to the uninterrupted run's."""
        work = self.root / "distill"
        work.mkdir()
        self.durations["distill"] = run(self._distill_argv("ref", "ref-ckpt"), work)
        reference = snapshot(work / "ref")
        assert reference is not None
        for c in range(chains):
            out, ckpt = f"out{c}", f"ckpt{c}"
            argv = self._distill_argv(out, ckpt)
            resumed_from = 0
            previous = None
            for k in range(kills_per_chain):
                killed = self._kill("distill", argv, work, work, work / ckpt)
                now = snapshot(work / out)
                if self._outcome("distill", now, previous) == "new complete":
                    self._check(
                        now["model.safetensors"] == reference["model.safetensors"],
                        f"distill chain {c} kill {k}: a complete student differs from the uninterrupted run's",
                    )
                self._after_kill("distill", work, {"ref", "ref-ckpt", *(f"out{j}" for j in range(c + 1)),
                                                    *(f"ckpt{j}" for j in range(c + 1))})  # fmt: skip
                if (work / ckpt).is_dir():
                    self._after_kill("distill checkpoint", work / ckpt, {"distill-checkpoint.pt"})
                if killed:
                    resumed_from = max(resumed_from, _checkpoint_step(work / ckpt))
                previous = now
            run(argv, work)
            final = snapshot(work / out)
            assert final is not None
            same = final["model.safetensors"] == reference["model.safetensors"]
            self._check(
                same, f"distill chain {c}: resumed from step {resumed_from}: weights differ from the uninterrupted run"
            )
            self.tally.resumes["distill"] += same and resumed_from > 0
            self._after_clean_run("distill checkpoint", work / ckpt, {"distill-checkpoint.pt"})

    # -- tune ----------------------------------------------------------------------------------------

    @staticmethod
    def _tune_argv(out: str) -> list[str]:
        flags = ["--max-drop", "0.5", "--trials", str(TUNE_TRIALS), "--builtins", "none", "--confirm", "0"]
        return torchslim("tune", *WORKLOAD, *flags, "--latency-runs", "2", "--no-progress", "--out", out)

    def tune(self, chains: int, kills_per_chain: int) -> None:
        """Each chain: kill the same ``tune --out`` command ``kills_per_chain`` times, then let it finish;
        its counted trials (complete and pruned) must be the uninterrupted run's points, each once."""
        work = self.root / "tune"
        work.mkdir()
        self.durations["tune"] = run(self._tune_argv("ref"), work)
        reference = _counted_points(work / "ref")
        for c in range(chains):
            out = f"out{c}"
            trials_before = 0
            for _ in range(kills_per_chain):
                # tune writes its study all along: the armed kills come within 50 ms of an output file's write
                killed = self._kill("tune", self._tune_argv(out), work, work / out)
                if (work / out).is_dir():
                    self._after_kill("tune", work / out, _TUNE_FILES)
                if killed:
                    trials_before = max(trials_before, _stored_trials(work / out))
            run(self._tune_argv(out), work)
            points = _counted_points(work / out)
            dupes = [p for p, n in Counter(points).items() if n > 1]
            self._check(not dupes, f"tune chain {c}: points counted twice: {dupes}")
            same = sorted(points) == sorted(reference)
            self._check(
                same, f"tune chain {c}: trial set {sorted(points)} differs from the uninterrupted {sorted(reference)}"
            )
            self.tally.resumes["tune"] += same and not dupes and trials_before > 0
            self._after_clean_run("tune", work / out, _TUNE_FILES)


_TUNE_FILES = {"best.yaml", "pareto.png", "report.md", "trials.json", "study.db", "study.db-journal"}


def _artifact_problem(folder: Path, recipe: str) -> str | None:
    """None when ``folder`` is a complete artifact of ``recipe`` that ``ts.load`` accepts, else why not."""
    import crashmod

    import torchslim as ts

    try:
        ts.load(folder, crashmod.build)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return f"{type(e).__name__}: {e}"
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    named = json.dumps(report)
    return None if recipe in named else f"report.json does not name recipe {recipe}"


def _pt2_problem(path: Path, artifact: Path) -> str | None:
    """None when ``path`` reloads with ``torch.export.load`` and computes what the artifact's model computes."""
    import crashmod
    import torch

    import torchslim as ts

    try:
        program = torch.export.load(str(path)).module()
        x = crashmod.example_inputs()
        expected = ts.load(artifact, crashmod.build)(*x)
        got = program(*x)
    except Exception as e:  # noqa: BLE001 - any failure to reload or run is the finding
        return f"{type(e).__name__}: {e}"
    return None if torch.allclose(got, expected, rtol=1e-4, atol=1e-5) else "outputs differ from the artifact's"


def _checkpoint_step(folder: Path) -> int:
    import torch

    path = folder / "distill-checkpoint.pt"
    return int(torch.load(path, weights_only=True)["step"]) if path.is_file() else 0


def _stored_trials(folder: Path) -> int:
    import sqlite3

    db = folder / "study.db"
    if not db.is_file():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        try:
            return int(con.execute("select count(*) from trials").fetchone()[0])
        except sqlite3.Error:
            return 0


def _counted_points(folder: Path) -> list[str]:
    """The parameters of the complete and pruned trials in ``trials.json``, as canonical JSON strings."""
    rows = json.loads((folder / "trials.json").read_text(encoding="utf-8"))["trials"]
    return [json.dumps(r.get("params"), sort_keys=True) for r in rows if r.get("state") in ("COMPLETE", "PRUNED")]
