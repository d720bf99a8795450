"""SIGKILL at seeded random moments: ``compress --out``, ``export``, ``distill`` and ``tune`` (issue #22).

The bounded run (7 kills) is part of the normal suite. The long run is driven by ``TORCHSLIM_KILLS``
(kills in total, spread over the four commands) and ``TORCHSLIM_KILL_SEED``; its counts are logged in
RELIABILITY.md::

    TORCHSLIM_KILLS=120 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/crash -m slow -p no:randomly -s
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from crash_harness import Campaign, merged


def _run(campaign: Campaign, compress: int, export: int, distill: tuple[int, int], tune: tuple[int, int]) -> dict:
    start = time.perf_counter()
    campaign.compress(compress)
    campaign.export(export)
    campaign.distill(*distill)
    campaign.tune(*tune)
    campaign.tally.seconds = time.perf_counter() - start
    return campaign.tally.as_dict()


def test_kills_bounded(tmp_path):
    campaign = Campaign(tmp_path, seed=0)
    counts = _run(campaign, compress=2, export=2, distill=(1, 2), tune=(1, 1))
    print("\nkill run:", json.dumps(counts, indent=2))
    assert counts["findings"] == []
    assert sum(counts["kills"].values()) + sum(counts["finished_before_kill"].values()) == 7
    # distill and tune were rerun to their end after their kills and matched the uninterrupted runs
    # (a chain whose kills all came before the first checkpoint is not counted as a resume).
    assert set(counts["resumes_matching"]) <= {"distill", "tune"}


def _guarded(job, campaign: Campaign) -> None:
    """Run ``job``; a command that fails outright (not killed) is a finding, and the other campaigns go on."""
    try:
        job(campaign)
    except AssertionError as e:
        campaign.tally.findings.append(str(e).splitlines()[0] + " " + str(e).splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif("TORCHSLIM_KILLS" not in os.environ, reason="the long kill run: set TORCHSLIM_KILLS (e.g. 120)")
def test_kills_long(tmp_path):
    """``TORCHSLIM_KILLS`` kills, a quarter per command (``TORCHSLIM_KILL_COMMANDS``: a comma-separated
    subset, default all four); distill and tune in chains of 5 kills then a resume. The campaigns run side
    by side (tune's resumes mostly wait for a killed trial's heartbeat to go stale)."""
    total = int(os.environ["TORCHSLIM_KILLS"])
    seed = int(os.environ.get("TORCHSLIM_KILL_SEED", "1"))
    commands = set(os.environ.get("TORCHSLIM_KILL_COMMANDS", "compress,export,distill,tune").split(","))
    per = max(1, total // 4)
    chains = max(1, per // 5)
    jobs = {
        "compress": (tmp_path / "files", 0, lambda c: c.compress(per)),
        "export": (tmp_path / "files", 0, lambda c: c.export(per)),
        "distill": (tmp_path / "distill", 1, lambda c: c.distill(chains, 5)),
        "tune": (tmp_path / "tune", 2, lambda c: c.tune(chains, 5)),
    }
    campaigns: dict[Path, Campaign] = {}
    work: dict[Path, list] = {}
    for name in ("compress", "export", "distill", "tune"):
        if name in commands:
            root, offset, job = jobs[name]
            campaigns.setdefault(root, Campaign(root, seed + offset))
            work.setdefault(root, []).append(job)
    start = time.perf_counter()
    with ThreadPoolExecutor(len(work)) as pool:
        running = [pool.submit(lambda r=r, s=s: [_guarded(job, campaigns[r]) for job in s]) for r, s in work.items()]
        for future in running:
            future.result()
    tally = merged([campaign.tally for campaign in campaigns.values()])
    tally.seconds = time.perf_counter() - start
    counts = tally.as_dict()
    print("\nkill run:", json.dumps({"seed": seed, "commands": sorted(commands), **counts}, indent=2))
    assert counts["findings"] == []
