"""``torchslim bench distill-fsdp`` (quick shapes): three real runs, one loss, declared rows and columns."""

from __future__ import annotations

import pytest
from multiproc import needs_gloo

from torchslim.bench import run_named_benchmark, table


@needs_gloo
@pytest.mark.slow
def test_quick_run_gives_the_declared_rows_with_one_loss(tmp_path) -> None:
    result = run_named_benchmark("distill-fsdp", quick=True)
    rows = {r["variant"]: r for r in result.rows}
    assert list(rows) == list(table("distill-fsdp").rows)
    assert [r["ranks"] for r in rows.values()] == [1, 2, 2]
    # The same global batches: one process, DDP and FSDP reach the same loss up to summation order.
    losses = [r["quality"]["final_loss"] for r in rows.values()]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-3)
    for r in rows.values():
        assert r["params"] == rows["fp32"]["params"] and 0 < r["train_mb"] <= r["peak_rss_mb"]
