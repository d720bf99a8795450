"""Write ``constraints.txt``: the exact versions of torchslim's dependencies installed in this venv.

The set is the transitive closure of what ``make setup`` installs (``torchslim[all]``): the requirements
are read from ``pyproject.toml``, their own requirements from the installed packages' metadata, so
packages installed by hand for other purposes stay out. torch's
local version label (``+cpu``) is dropped: ``torch==2.13.0`` accepts the CPU build the Makefile
installs and also resolves where only the plain release exists.

Run it with the venv's Python after changing ``pyproject.toml``'s dependencies (``make lock``)::

    .venv/bin/python tools/lock.py > constraints.txt
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS = ("all",)  # what the Makefile installs: -e ".[all]"
HEADER = """\
# Versions `make setup` installs (pip install -c constraints.txt), as tested by CI.
# Regenerate after changing pyproject.toml's dependencies: `make lock` (tools/lock.py).
"""


def _requires(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """``dist``'s requirements that apply on this interpreter with ``extras`` selected."""
    out = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def project_requirements(pyproject: dict, extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """The project's base requirements plus those of ``extras`` (self-references like ``pkg[a,b]`` expanded)."""
    project = pyproject["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    todo, done = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra not in done:
            done.add(extra)
            for req in map(Requirement, optional.get(extra, [])):
                if canonicalize_name(req.name) == name:
                    todo.extend(req.extras)
                else:
                    reqs.append(req)
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """``{name: version}`` of every installed distribution ``roots`` need, transitively."""
    pins: dict[str, str] = {}
    todo = [(r.name, set(r.extras)) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (canonicalize_name(name), frozenset(wanted))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"lock: {name} is required but not installed; run `make lock` (it installs first)")
        pins[canonicalize_name(name)] = Version(dist.version).public
        for req in _requires(dist, wanted):
            todo.append((req.name, set(req.extras)))
    return pins


def main() -> int:
    pins = closure(project_requirements(tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))))
    sys.stdout.write(HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
