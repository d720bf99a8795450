"""Safe weight loading: safetensors, or ``torch.load(weights_only=True)``; never pickle, never TorchScript.

Example:
    >>> import tempfile, os, torch
    >>> from safetensors.torch import save_file
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"w": torch.ones(2)}, p)
    >>> load_state_dict_file(p)["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from torchslim.errors import UnsafeInputError, UsageError


def _check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UnsafeInputError(f"{source}: NaN or Inf values in {len(bad)} tensor(s): {', '.join(bad[:20])}")


def _is_torchscript(path: Path) -> bool:
    """True when ``path`` is a zip archive holding TorchScript code; UnsafeInputError for a broken zip."""
    try:
        if not zipfile.is_zipfile(path):  # itself raises BadZipFile on some broken ZIP64 records
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception as e:  # noqa: BLE001 - zipfile raises BadZipFile, NotImplementedError, UnicodeDecodeError, ...
        raise UnsafeInputError(f"{path}: a corrupt zip archive ({type(e).__name__}: {str(e)[:200]})") from None
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pt``/``.pth``/``.bin`` weights file.

    Raises:
        UsageError: the file does not exist.
        UnsafeInputError: malformed file, TorchScript archive, pickle with code, NaN/Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from torchslim.io.artifact import read_safetensors_file

        tensors = read_safetensors_file(path)  # the header length is checked before the file is read whole
    else:
        if _is_torchscript(path):
            raise UnsafeInputError(
                f"{path}: a TorchScript archive; refusing to load it (export weights as safetensors)"
            )
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - every failure of the restricted unpickler is unsafe input
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UnsafeInputError(f"{path}: refused by torch.load(weights_only=True): {reason}") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UnsafeInputError(f"{path}: expected a mapping of names to tensors")
        tensors = dict(obj)
    _check_finite(tensors, str(path))
    return tensors
