"""The kill harness's folder is importable: ``crash_harness`` here, ``crashmod`` here and in the children."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
