"""Feature taps capture submodule outputs by path and always remove their hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.distillation import FeatureTaps
from torchslim.distillation.taps import select_output, split_tap_path


class _TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x * 2


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), _TupleOut(), nn.Identity())


def test_taps_record_outputs_and_tuple_elements() -> None:
    model = _model()
    x = torch.ones(2, 3)
    with FeatureTaps(model, ["0", "1[1]", "1", ""]) as taps:
        model[0](x)  # a direct call is recorded too
        h = model[0](x)
        model[1](h)
        torch.testing.assert_close(taps["0"], h)
        torch.testing.assert_close(taps["1[1]"], h * 2)
        torch.testing.assert_close(taps["1"], h + 1)  # no index: first element of a tuple
        taps.clear()
        with pytest.raises(ValueError, match="did not run"):
            taps["0"]


def test_hooks_are_removed_even_after_an_exception() -> None:
    model = _model()
    with pytest.raises(RuntimeError), FeatureTaps(model, ["0", "1"]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_paths_are_all_listed() -> None:
    with pytest.raises(ValueError) as e:
        FeatureTaps(_model(), ["7", "0.weight.x", "a..b"])
    assert "'7'" in str(e.value) and "'0.weight.x'" in str(e.value) and "a..b" in str(e.value)


def test_split_and_select() -> None:
    assert split_tap_path("") == ("", None)
    assert split_tap_path("[1]") == ("", 1)
    assert split_tap_path("a.b_c.3") == ("a.b_c.3", None)

    class Out:
        last_hidden_state = torch.zeros(1)

    assert select_output(Out()).shape == (1,)
    assert select_output({"sentence_embedding": torch.ones(2)}).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="eager"):
        select_output((torch.zeros(1), None), 1)
