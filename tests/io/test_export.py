from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.cli import main
from torchslim.errors import UnsupportedModelError
from torchslim.export import export_onnx, export_pt2

sys.path.insert(0, str(Path(__file__).parent))
from test_artifact import X, compressed  # noqa: E402


def test_onnx_and_pt2_match_torch(tmp_path):
    m = compressed()  # folded BN + bf16 Linear: ONNX gets the exact fp32 values of the bf16 weights
    # ... and computes in fp32, the model in bf16: compared with the model itself, bf16 rounding remains.
    assert export_onnx(m, (X,), tmp_path / "m.onnx") < 2e-3
    assert export_pt2(m, (X,), tmp_path / "m.pt2") == 0.0
    assert m[4].weight.dtype == torch.bfloat16  # export did not change the model


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def test_unsupported_export_is_exit_5_error(tmp_path):
    with pytest.raises(UnsupportedModelError, match="torch.export failed"):
        export_pt2(DataDependent(), (torch.ones(2),), tmp_path / "d.pt2")
    assert not (tmp_path / "d.pt2").exists()


def test_cli_export_and_pickle_weights_refused(tmp_path, capsys):
    art = tmp_path / "art"
    assert (
        main(["compress", "--workload", "digits", "--recipe", "fold-bn", "--out", str(art), "--latency-runs", "2"]) == 0
    )
    assert (
        main(["export", str(art), "--workload", "digits", "--format", "pt2", "--json", str(tmp_path / "e.json")]) == 0
    )
    assert (tmp_path / "art.pt2").is_file()
    ts.load(art, factory=__import__("torchslim.workloads.digits", fromlist=["x"]).build_teacher)  # still intact

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"0.weight": Evil()}, f)
    code = main(
        ["measure", "--model", "torchslim.workloads.digits:build_teacher", "--weights", str(tmp_path / "evil.pt")]
    )
    assert code == 4 and not marker.exists()
