"""Built-in workloads (model + data + metric), looked up by name.

Example:
    >>> from torchslim.workloads import get_workload, workload_names
    >>> "digits" in workload_names()
    True
    >>> get_workload("digits").metric
    'accuracy'
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torchslim.errors import UsageError
from torchslim.workloads.base import Workload, cache_dir

__all__ = ["WORKLOADS", "Workload", "cache_dir", "get_workload", "workload_names"]


def _digits(data: str | Path | None) -> Workload:
    # Imported lazily so `import torchslim.workloads` stays cheap (no scikit-learn until needed).
    from torchslim.workloads.digits import DigitsWorkload

    return DigitsWorkload()  # the data ships with scikit-learn; ``data`` is ignored


# name -> constructor taking the optional data path. A workload whose data lives on disk
# (e.g. ``"minilm-stsb": _minilm``) adds one line here and reads ``data`` in its constructor.
WORKLOADS: dict[str, Callable[[str | Path | None], Workload]] = {
    "digits": _digits,
    "minilm-stsb": lambda data: __import__("torchslim.workloads.minilm", fromlist=["_"]).MiniLMWorkload(data),
    "fsdd-kws": lambda data: __import__("torchslim.workloads.fsdd", fromlist=["_"]).FsddWorkload(data),
    "shakespeare-gpt": lambda data: __import__("torchslim.workloads.shakespeare", fromlist=["_"]).ShakespeareWorkload(
        data
    ),
    "llama-decode": lambda data: __import__("torchslim.workloads.llama", fromlist=["_"]).LlamaDecodeWorkload(
        data or "full"
    ),
}


def workload_names() -> list[str]:
    """The names of the built-in workloads, sorted.

    Example:
        >>> workload_names()[0]
        'digits'
    """
    return sorted(WORKLOADS)


def get_workload(name: str, data: str | Path | None = None) -> Workload:
    """The workload called ``name``, reading its data from ``data`` when it needs files.

    Args:
        name: a name from :func:`workload_names`.
        data: path to the workload's data (ignored by workloads whose data ships with a package).

    Returns:
        A :class:`Workload` instance.

    Raises:
        UsageError: if ``name`` is not a built-in workload; the message lists the valid names.

    Example:
        >>> get_workload("digits").name
        'digits'
    """
    try:
        make = WORKLOADS[name]
    except KeyError:
        raise UsageError(f"unknown workload {name!r}; choose one of: {', '.join(workload_names())}") from None
    return make(data)
