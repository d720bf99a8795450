"""The C++ kernels compile at first use from the installed package: every file they are built from (the
sources and their shared header) must be in the package data, or an installed wheel falls back to the slow
torch reference."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from torchslim.kernels import ops

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later


def test_every_kernel_source_and_header_ships_in_the_package():
    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["torchslim.kernels"]
    kernels = root / "torchslim" / "kernels"
    files = sorted(p.relative_to(kernels).as_posix() for p in (kernels / "csrc").iterdir() if p.is_file())
    assert any(f.endswith(".h") for f in files)  # the header the sources include
    assert {p.relative_to(kernels).as_posix() for p in ops._SOURCES} <= set(files)
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, f"not in [tool.setuptools.package-data] torchslim.kernels: {missing}"
