"""Launch a test script under ``torchrun`` on one host (gloo over loopback), and load worker scripts in-process.

The distributed calibration and the DDP distillation tests compare a multi-process run with a
single-process one; this is the launcher they share.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch.distributed as dist

__all__ = ["free_port", "load_worker", "needs_gloo", "torchrun", "torchrun_env"]

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def load_worker(path: Path, name: str) -> ModuleType:
    """Import the script at ``path`` as module ``name`` (its single-process entry points)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for ``--master_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(**extra: str) -> dict[str, str]:
    """The environment plus gloo on loopback, one OpenMP thread per process, and ``extra``."""
    return dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", **extra)


def torchrun(
    args: list[str], nproc: int, *, timeout: float = 120, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m torch.distributed.run`` with ``nproc`` processes on this host over ``args``
    (a script and its arguments, or ``-m module ...``); output captured as text."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc)]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return subprocess.run(
        cmd, cwd=cwd, env=torchrun_env() if env is None else env, capture_output=True, text=True, timeout=timeout
    )
