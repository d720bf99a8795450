"""Command-line pieces shared by every command (``torchslim.cli`` and the ``tune``, ``sensitivity``
and ``distill`` subcommands): ``--workload``/``--data``, ``--device`` and its check.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_device_arg(p)
    >>> p.parse_args([]).device
    'cpu'
"""

from __future__ import annotations

import argparse

__all__ = ["WORKLOAD_HELP", "add_device_arg", "add_workload_arg", "check_device"]

WORKLOAD_HELP = "a built-in workload ({names}) or pkg.module:NAME, your own Workload (subclass, instance or factory)"


def add_workload_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--workload`` (built-in name or ``pkg.module:NAME``) and ``--data``, as in every command."""
    from torchslim.workloads import workload_names

    p.add_argument("--workload", required=required, help=WORKLOAD_HELP.format(names=", ".join(workload_names())))
    p.add_argument("--data", help="data path for workloads that read a data set (passed to a user workload's factory)")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device`` (default cpu): refused at once when that device is not available."""
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, mps (default cpu)")


def check_device(name: str) -> str:
    """``name`` checked against the devices available here (:func:`torchslim.core.device.check_device`), as a usage
    error (exit 2) for ``--device`` when it is malformed or absent, before any work starts.

    Example:
        >>> check_device("cpu")
        'cpu'
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        torchslim.errors.UsageError: --device gpu: unknown device 'gpu': use 'cpu', 'cuda', 'cuda:N' or 'mps'
    """
    from torchslim.core.device import check_device as check
    from torchslim.errors import ConfigError, UsageError

    try:
        return check(name)
    except ConfigError as e:
        raise UsageError(f"--device {name}: {e}") from None
