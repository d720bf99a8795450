"""One build of the C++ kernels per test session; tests that need it skip with the reason when it fails."""

from __future__ import annotations

import shutil

import pytest

from torchslim import kernels


@pytest.fixture(scope="session")
def compiled() -> str:
    """The compiled backend (``avx512-vnni`` or ``portable-c++``); skips when no C++ build is possible."""
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler on PATH: the W4A8 kernel cannot be built (the torch reference runs instead)")
    backend = kernels.load()
    if backend == "torch-reference":
        pytest.skip("the W4A8 C++ kernel did not build here (see the logged reason); the torch reference runs")
    return backend
