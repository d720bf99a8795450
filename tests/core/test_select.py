from __future__ import annotations

import torch.nn as nn

from torchslim.core.config import config_from_dict
from torchslim.core.select import Select
from torchslim.core.walker import replace_module_, swap_modules_


class Compressed(nn.Module):
    torchslim_compressed = True

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Sequential(nn.Linear(2, 2), nn.ReLU()),
        Compressed(),
        nn.Linear(2, 10),
    )


def names(select: Select) -> list[str]:
    return [n for n, _ in select.modules(_model())]


def test_types_match_class_and_bases():
    assert names(Select(types=("Linear",))) == ["1.0", "3"]
    assert names(Select(types=("Conv2d", "Linear"))) == ["0", "1.0", "3"]
    assert names(Select(types=("_ConvNd",))) == ["0"]


def test_include_exclude_regexes():
    assert names(Select(types=("Linear",), include=(r"^1\.",))) == ["1.0"]
    assert names(Select(types=("Linear",), exclude=(r"^3$",))) == ["1.0"]
    assert names(Select(include=("^1",), exclude=("ReLU", r"\.1$"))) == ["1", "1.0"]


def test_compressed_modules_and_their_insides_are_skipped():
    all_names = names(Select())
    assert "2" not in all_names and "2.inner" not in all_names
    assert all_names == ["", "0", "1", "1.0", "1.1", "3"]


def test_select_round_trips():
    s = Select(include=("a",), exclude=("b",), types=("Linear",))
    assert config_from_dict(s.to_dict()) == s
    assert config_from_dict({"kind": "select", "types": ["Linear"]}) == Select(types=("Linear",))


def test_swap_replaces_and_reports_skips():
    m = _model()
    changed, skipped = swap_modules_(m, Select(types=("Linear",)), lambda n, mod: nn.Identity() if n == "3" else None)
    assert changed == ["3"] and skipped == ["1.0"]
    assert isinstance(m[3], nn.Identity)


def test_swap_skips_children_of_replaced_modules():
    m = _model()
    seen = []

    def fn(name: str, mod: nn.Module) -> nn.Module:
        seen.append(name)
        return nn.Identity() if name == "1" else mod

    swap_modules_(m, Select(include=(r"^1",)), fn)
    assert seen == ["1"]


def test_replace_nested():
    m = _model()
    replace_module_(m, "1.1", nn.Tanh())
    assert isinstance(m[1][1], nn.Tanh)
