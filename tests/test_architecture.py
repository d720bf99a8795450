"""The package's import contracts (``[tool.importlinter]`` in pyproject.toml, see docs/architecture.md):
layers without upward imports, no cycles between sibling modules, no imports of another package's
private names."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import grimp
import pytest
import tomllib
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "torchslim"


def _layers() -> list[grimp.Layer]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [grimp.Layer(*(name.strip() for name in layer.split("|")), independent=True) for layer in contract["layers"]]


def test_import_contracts_are_kept() -> None:
    # import-linter configures logging (logging.config with disable_existing_loggers), which silenced
    # every logger already created in this process, torchslim's included, for the tests after this one.
    before = {
        name: lg.disabled for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)
    }
    try:
        assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
    finally:
        for name, disabled in before.items():
            logging.getLogger(name).disabled = disabled


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("torchslim.tuning.cli", "torchslim.cli"),  # a subcommand reaching up into the CLI
        ("torchslim.structured.activation", "torchslim.quantization.common.smoothquant"),  # sibling techniques
        ("torchslim.io.artifact", "torchslim.tuning"),  # storage reaching up into the tuner
    ],
)
def test_the_layers_contract_catches_an_upward_import(importer: str, imported: str) -> None:
    graph = grimp.build_graph("torchslim")
    assert not graph.find_illegal_dependencies_for_layers(layers=_layers(), containers={"torchslim"})
    graph.add_import(importer=importer, imported=imported)
    assert graph.find_illegal_dependencies_for_layers(layers=_layers(), containers={"torchslim"})


def _private_imports(text: str, rel: Path) -> list[str]:
    """``from torchslim.X import _name`` in the file ``rel`` (relative to the repository) where X is
    another top-level package or module than the file's own."""
    own = ".".join(rel.with_suffix("").parts[:2])
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torchslim"):
            other = ".".join(node.module.split(".")[:2])
            hidden = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if other != own and hidden:
                found.append(f"{rel.as_posix()}:{node.lineno}: from {node.module} import {', '.join(hidden)}")
    return found


def test_no_package_imports_another_packages_private_names() -> None:
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        for hit in _private_imports(path.read_text(encoding="utf-8"), path.relative_to(ROOT))
    ]
    assert not found, "\n".join(found)


def test_the_private_import_check_sees_one() -> None:
    text = "from torchslim.cli import _add_model_args\nfrom torchslim.tuning.tune import _Skip\n"
    hits = _private_imports(text, Path("torchslim/tuning/report.py"))
    assert hits == ["torchslim/tuning/report.py:1: from torchslim.cli import _add_model_args"]
