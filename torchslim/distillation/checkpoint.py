"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``, bound to their run.

A checkpoint holds the step, the student and projection weights, the optimizer and schedule state,
the RNG state and the history, plus a *fingerprint* of the run (config, seed, data size, process
count). Resuming with a different fingerprint is refused: continuing a run under changed settings
would silently produce a model no config describes.

Example:
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_checkpoint(folder, {"step": 3, "fingerprint": {"lr": 0.1}, "w": torch.ones(1)})
    >>> load_checkpoint(folder, {"lr": 0.1})["step"]
    3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchslim.errors import ConfigError, UnsafeInputError
from torchslim.io.atomic import atomic_file

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "distill-checkpoint.pt"


def save_checkpoint(folder: str | Path, state: dict[str, Any], name: str = CHECKPOINT_NAME) -> Path:
    """Write ``state`` to ``folder/name`` atomically (:func:`torchslim.io.atomic_file`).

    A crash or SIGKILL mid-write leaves the previous checkpoint intact and no visible temporary file.

    Raises:
        OutputExistsError: the folder cannot be written (the message names why).
    """
    path = Path(folder) / name
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return path


def _differences(saved: Any, current: Any, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in saved or key not in current:
                out.append(f"{sub}: {saved.get(key, '(absent)')!r} -> {current.get(key, '(absent)')!r}")
            else:
                out += _differences(saved[key], current[key], sub)
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)) and len(saved) == len(current):
        return [
            d for i, (a, b) in enumerate(zip(saved, current, strict=True)) for d in _differences(a, b, f"{path}[{i}]")
        ]
    return [] if saved == current else [f"{path}: {saved!r} -> {current!r}"]


def load_checkpoint(
    folder: str | Path, fingerprint: dict[str, Any], name: str = CHECKPOINT_NAME
) -> dict[str, Any] | None:
    """The checkpoint ``folder/name`` if there is one, after checking it belongs to this run.

    Args:
        folder: the checkpoint folder.
        fingerprint: this run's settings; must equal the saved ones.
        name: the file in ``folder`` (one per rank for a sharded run).

    Returns:
        The saved state, or None when the folder holds no checkpoint.

    Raises:
        ConfigError: the checkpoint was written by a run with other settings (every difference listed).
        UnsafeInputError: the file is not a loadable weights-only checkpoint.
    """
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise UnsafeInputError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise UnsafeInputError(f"{path} is not a torchslim distillation checkpoint")
    diffs = _differences(state["fingerprint"], fingerprint)
    if diffs:
        raise ConfigError(
            f"checkpoint {path} belongs to a run with other settings; delete it or use another folder to start over",
            diffs,
        )
    return state
