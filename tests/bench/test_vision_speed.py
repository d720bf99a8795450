"""``torchslim bench vision-speed``: the three networks match their papers' parameter counts, the table
declares ``ARCH/VARIANT`` rows checked per architecture, and the quality columns and the ONNX Runtime
static-int8 peer compute what they say."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.bench import BENCHMARKS, BenchResult, table
from torchslim.bench.report import row_command
from torchslim.bench.vision_nets import ARCHS, PUBLISHED_PARAMS, build, imagenet_like
from torchslim.bench.vision_speed import TABLE, VARIANTS, agreement, onnxruntime_int8_static


@pytest.mark.parametrize("arch", list(ARCHS))
def test_parameter_counts_match_the_papers_and_forward_shape(arch: str) -> None:
    m = build(arch, stats_batches=0)
    params = sum(p.numel() for p in m.parameters())
    assert abs(params - PUBLISHED_PARAMS[arch]) / PUBLISHED_PARAMS[arch] < 0.01
    with torch.no_grad():
        assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_batchnorm_statistics_come_from_the_seeded_images() -> None:
    a, b = build("resnet18", stats_batches=1, size=32, batch=2), build("resnet18", stats_batches=1, size=32, batch=2)
    bn = a[0][1]
    assert not a.training and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="unknown architecture"):
        build("vgg16")


def test_imagenet_like_is_seeded_and_normalised() -> None:
    x = imagenet_like(64, 16, seed=3)
    assert torch.equal(x, imagenet_like(64, 16, seed=3)) and not torch.equal(x, imagenet_like(64, 16, seed=4))
    # uniform [0, 1] images normalised with the ImageNet mean / std: channel means (0.5 - mean) / std
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x.mean((0, 2, 3)), expected, atol=0.05)


def test_table_rows_are_arch_slash_variant_and_registered() -> None:
    assert "vision-speed" in BENCHMARKS and table("vision-speed") is TABLE
    assert TABLE.rows == tuple(
        f"{a}/{v}" for a in ("resnet18", "mobilenetv3-large", "efficientnet-b0") for v in VARIANTS
    )
    assert VARIANTS == (
        "fp32",
        "torchslim-bf16",
        "torchslim-int8-static",
        "torchslim-channels-2x-int8",
        "peer-torch.ao-int8-static",
        "peer-onnxruntime-int8-static",
    )
    assert TABLE.metrics == ("cosine", "top1_agreement") and TABLE.columns == ("build_s", "speedup_b1")
    assert row_command("vision-speed", "resnet18/torchslim-int8-static", "D") == "torchslim bench vision-speed"


def _row(name: str, **extra) -> dict:
    return {"variant": name, "quality": {"cosine": 1.0, "top1_agreement": 1.0}, "speedup_b1": 1.0, **extra}


def test_check_is_per_architecture() -> None:
    ours = [v for v in VARIANTS if not v.startswith("peer-")]
    rows = [_row(f"{a}/{v}") for a in ("resnet18", "efficientnet-b0") for v in ours]  # peers may be left out
    TABLE.check(BenchResult("vision-speed", rows))
    with pytest.raises(ValueError, match="missing"):
        TABLE.check(BenchResult("vision-speed", rows[1:]))  # resnet18/fp32 missing
    with pytest.raises(ValueError, match="architectures"):
        TABLE.check(BenchResult("vision-speed", [*rows[len(ours) :], *rows[: len(ours)]]))
    with pytest.raises(ValueError, match="undeclared"):
        TABLE.check(BenchResult("vision-speed", [_row("resnet18/fp32", macs=1), *rows[1:]]))


def test_agreement_columns() -> None:
    ref = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
    q = agreement(ref, ref * 2)
    assert q["top1_agreement"] == 1.0 and q["cosine"] == pytest.approx(1.0)
    assert agreement(ref, -ref)["top1_agreement"] == 0.0


def test_onnxruntime_static_peer_tracks_fp32(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    cal = [(imagenet_like(8, 16, seed=i),) for i in range(2)]
    peer, size = onnxruntime_int8_static(m, cal, str(tmp_path))
    x = imagenet_like(16, 16, seed=9)
    with torch.no_grad():
        q = agreement(m(x), peer(x))
    assert size > 0 and q["cosine"] > 0.98
