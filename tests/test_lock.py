"""constraints.txt (the versions `make setup` installs) agrees with pyproject.toml's dependencies.

Every dependency of what `make setup` installs (the base list and every extra that ``all`` pulls in)
must be pinned in constraints.txt, at a version its pyproject specifier allows. `make lock` rewrites
the file (tools/lock.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SETUP_EXTRAS = ("all",)  # what the Makefile installs: -e ".[all]"


def setup_requirements(pyproject: dict) -> list[Requirement]:
    """The requirements `make setup` installs: the base list plus the extras, self-references expanded."""
    project = pyproject["project"]
    name = canonicalize_name(project["name"])
    extras = project.get("optional-dependencies", {})
    out: list[Requirement] = [Requirement(r) for r in project.get("dependencies", [])]
    todo, done = list(SETUP_EXTRAS), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for line in extras.get(extra, []):
            req = Requirement(line)
            if canonicalize_name(req.name) == name:
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def read_pins(text: str) -> dict[str, Version]:
    """``{name: version}`` from ``name==version`` lines (comments and blank lines skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def disagreements(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """Each requirement missing from ``pins`` or pinned outside its specifier."""
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req.name}: in pyproject.toml ({req}) but not in constraints.txt")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}: constraints.txt pins {pinned}, outside pyproject.toml's {req.specifier}")
    return problems


def test_constraints_pin_every_setup_dependency_within_its_specifier() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = read_pins((ROOT / "constraints.txt").read_text(encoding="utf-8"))
    problems = disagreements(setup_requirements(pyproject), pins)
    assert not problems, "pyproject.toml and constraints.txt disagree (run `make lock`):\n" + "\n".join(problems)


def test_torch_pinned_to_the_tested_cpu_release() -> None:
    pins = read_pins((ROOT / "constraints.txt").read_text(encoding="utf-8"))
    assert pins["torch"] == Version("2.13.0")


def test_a_missing_or_out_of_range_pin_is_reported() -> None:
    pyproject = {
        "project": {
            "name": "demo",
            "dependencies": ["numpy>=1.24", "rich>=13"],
            "optional-dependencies": {"dev": ["pytest>=8"], "all": ["demo[dev]"]},
        }
    }
    reqs = setup_requirements(pyproject)
    assert sorted(r.name for r in reqs) == ["numpy", "pytest", "rich"]
    problems = disagreements(reqs, read_pins("numpy==1.20.0\nRich==13.1\n"))
    assert len(problems) == 2
    assert any(p.startswith("numpy: constraints.txt pins 1.20.0") for p in problems)
    assert any(p.startswith("pytest: in pyproject.toml") for p in problems)


def test_makefile_installs_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    install_lines = [ln for ln in makefile.splitlines() if "pip install" in ln and "-e" in ln.split()]
    assert any("-c constraints.txt" in ln for ln in install_lines)
