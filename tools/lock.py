"""Write ``constraints.txt``: the exact versions of torchslim's dependencies installed in this venv.

The set is the transitive closure of what ``make setup`` installs (``torchslim[all]``), read from the
installed packages' own metadata, so packages installed by hand for other purposes stay out. torch's
local version label (``+cpu``) is dropped: ``torch==2.13.0`` accepts the CPU build the Makefile
installs and also resolves where only the plain release exists.

Run it with the venv's Python after changing ``pyproject.toml``'s dependencies (``make lock``)::

    .venv/bin/python tools/lock.py > constraints.txt
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "torchslim"
EXTRAS = ("all",)
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


def closure(project: str = PROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """``{name: version}`` of every installed distribution ``project[extras]`` needs, transitively."""
    pins: dict[str, str] = {}
    todo = [(project, set(extras))]
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
            sys.exit(f"lock: {name} is required but not installed; run `make setup` first")
        if canonicalize_name(name) != canonicalize_name(project):
            pins[canonicalize_name(name)] = Version(dist.version).public
        for req in _requires(dist, wanted):
            todo.append((req.name, set(req.extras)))
    return pins


def main() -> int:
    pins = closure()
    sys.stdout.write(HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
