"""Test-session setup shared by ``tests/`` and the doctests under ``torchslim/``.

- ``TORCHSLIM_DATA`` defaults to the repository's sibling ``shared/data`` folder (the Makefile sets
  the same), so the built-in workloads find their data sets; a value already set wins.
- Every test gets back torch's thread count as it found it (results of float sums depend on it: a test
  that leaves one thread changes later tests' numbers).
- Doctests that train, tune or benchmark are marked ``slow`` (a doctest cannot carry a marker itself),
  so ``make quick`` (``-m "not slow and not fuzz"``) leaves them out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TORCHSLIM_DATA", str((Path(__file__).resolve().parent / ".." / "shared" / "data").resolve()))

# Modules whose doctests train a model, run a tuning study or a benchmark (seconds to minutes each).
SLOW_DOCTEST_MODULES = (
    "torchslim/tuning/tune.py",
    "torchslim/tuning/sensitivity.py",
    "torchslim/tuning/report.py",
    "torchslim/distillation/",
    "torchslim/bench/",
    "torchslim/recipes/recipe.py",
    "torchslim/quantization/int8/qat.py",
    "torchslim/pruning/gradual.py",
    "torchslim/finetune.py",
    "torchslim/training.py",
    "torchslim/workloads/",
)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent
    for item in items:
        if not isinstance(item, pytest.DoctestItem):
            continue
        path = Path(str(item.path)).resolve()
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        if rel.startswith(SLOW_DOCTEST_MODULES):
            item.add_marker(pytest.mark.slow)
