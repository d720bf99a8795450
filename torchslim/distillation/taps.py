"""Feature taps: capture the outputs of submodules named by path, through forward hooks removed afterwards.

A *tap path* names what a loss compares: ``""`` is the model's own output, ``"features.3"`` the
output of that submodule, and a trailing ``[i]`` picks element ``i`` of a tuple output, e.g.
``"encoder.layer.0.attention.self[1]"`` for a Hugging Face self-attention's probabilities.

Example:
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> with FeatureTaps(model, ["0"]) as taps:
    ...     out = model(torch.zeros(4, 2))
    ...     taps["0"].shape
    torch.Size([4, 3])
    >>> len(model[0]._forward_hooks)
    0
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn as nn

from torchslim.calibration.hooks import forward_hooks

__all__ = ["FeatureTaps", "check_tap_path", "select_output", "split_tap_path"]

_PATH = re.compile(r"^(?P<module>[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?(?:\[(?P<index>\d+)\])?$")


def check_tap_path(path: str) -> str | None:
    """The problem with tap ``path`` as a message, or None when it is well formed.

    Example:
        >>> check_tap_path("encoder.layer.0[1]") is None, check_tap_path("a..b") is not None
        (True, True)
    """
    if not isinstance(path, str) or not _PATH.match(path):
        return f"invalid tap path {path!r}; use a dotted module path such as 'features.3', optionally ending in [i]"
    return None


def split_tap_path(path: str) -> tuple[str, int | None]:
    """``"a.b[1]"`` -> ``("a.b", 1)``; ``"a.b"`` -> ``("a.b", None)``; ``""`` is the model output.

    Raises:
        ValueError: a malformed path.

    Example:
        >>> split_tap_path("encoder.layer.0.attention.self[1]")
        ('encoder.layer.0.attention.self', 1)
    """
    m = _PATH.match(path)
    if m is None:
        raise ValueError(check_tap_path(path))
    index = m.group("index")
    return m.group("module") or "", None if index is None else int(index)


def select_output(output: Any, index: int | None = None) -> torch.Tensor:
    """The tensor a tap or model output stands for.

    With ``index``: element ``index`` of a tuple/list output. Without: the tensor itself, a model
    output's ``logits`` or ``last_hidden_state`` (Hugging Face ``ModelOutput``), a ``sentence_embedding``
    entry of a dict (sentence-transformers), else the first element of a tuple.

    Raises:
        ValueError: no tensor can be found (the message says what the output was).

    Example:
        >>> import torch
        >>> select_output((torch.zeros(1), torch.ones(2)), 1).tolist()
        [1.0, 1.0]
    """
    if index is not None:
        if not isinstance(output, (tuple, list)) or index >= len(output):
            raise ValueError(
                f"tap index [{index}] needs a tuple output with more elements, got {type(output).__name__}"
            )
        output = output[index]
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "sentence_embedding", "last_hidden_state"):
        value = output.get(key) if isinstance(output, dict) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if output is None:
        raise ValueError(
            "tapped output is None (a Hugging Face attention returns no probabilities unless the model "
            "was loaded with attn_implementation='eager')"
        )
    raise ValueError(f"cannot find a tensor in an output of type {type(output).__name__}; add [i] to the tap path")


class FeatureTaps:
    """Context manager recording the outputs of submodules of ``model`` during forward passes.

    Only paths naming a submodule get a hook (``""``, the model output, is the caller's return value).
    The latest output of each tapped module is kept (a module called twice per forward keeps the last);
    hooks are removed on exit, also after an exception.

    Args:
        model: the module to tap.
        paths: tap paths (see the module docstring); duplicates are fine.

    Raises:
        ValueError: a path is malformed or names no submodule of ``model`` (all are listed).

    Example:
        >>> import torch, torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> with FeatureTaps(m, ["0", ""]) as taps:
        ...     _ = m(torch.ones(1, 2))
        ...     sorted(taps.paths)
        ['0']
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]) -> None:
        self.model = model
        self.paths: dict[str, tuple[str, int | None]] = {}
        problems: list[str] = []
        modules = dict(model.named_modules())
        for path in paths:
            problem = check_tap_path(path)
            if problem:
                problems.append(problem)
                continue
            module, index = split_tap_path(path)
            if not module:
                continue
            if module not in modules:
                problems.append(f"{type(model).__name__} has no submodule {module!r}")
                continue
            self.paths[path] = (module, index)
        if problems:
            raise ValueError("bad tap paths:\n  " + "\n  ".join(problems))
        self._outputs: dict[str, Any] = {}
        self._hooks = ExitStack()

    def __enter__(self) -> FeatureTaps:
        modules = dict(self.model.named_modules())
        names = sorted({m for m, _ in self.paths.values()})
        self._hooks.enter_context(forward_hooks((modules[name], self._hook(name)) for name in names))
        return self

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            self._outputs[name] = output

        return record

    def __exit__(self, *exc: Any) -> None:
        self._hooks.close()
        self._outputs.clear()

    def clear(self) -> None:
        """Forget the recorded outputs (call before each forward so a stale tensor is never reused)."""
        self._outputs.clear()

    def __getitem__(self, path: str) -> torch.Tensor:
        module, index = self.paths[path]
        if module not in self._outputs:
            raise ValueError(f"module {module!r} did not run in the last forward pass")
        return select_output(self._outputs[module], index)
