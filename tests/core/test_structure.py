from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.structure import record_op, replay_ops, structure_ops
from torchslim.errors import RegistryError, UnsafeInputError


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


def test_replay_rebuilds_structure_of_fold_and_cast():
    m = build().eval()
    m[1].running_var.uniform_(0.5, 2)
    ts.compress_(m, ts.FoldBatchNorm())
    ts.compress_(m, ts.CastDtype("bfloat16"), select=ts.Select(types=("Linear",)))
    ops = structure_ops(m)
    assert [o["op"] for o in ops] == ["fold-batchnorm", "cast-dtype"]
    fresh = replay_ops(build(), ops)
    assert {k: (v.shape, v.dtype) for k, v in fresh.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in m.state_dict().items()
    }
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), m(x))
    assert structure_ops(fresh) == ops


def test_unknown_ops_refused():
    with pytest.raises(RegistryError):
        record_op(nn.Linear(1, 1), "no-such-op", {})
    with pytest.raises(UnsafeInputError):
        replay_ops(build(), [{"op": "os.system", "data": {}}])
    with pytest.raises(UnsafeInputError):
        replay_ops(build(), ["garbage"])  # type: ignore[list-item]
