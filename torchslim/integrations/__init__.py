"""Integrations with other libraries, activated lazily so that ``import torchslim`` stays cheap.

:func:`install` (called by ``import torchslim``) does two things and imports nothing heavy:

- registers torchslim's quantizer with transformers (``quant_method: "torchslim"``, see
  :mod:`torchslim.integrations.transformers_quantizer`) right after transformers imports its quantizer
  registry, or at once when that is already imported; ``AutoModel.from_pretrained(dir)`` then returns
  the compressed model of a folder written by ``ts.save`` or by a compressed model's ``save_pretrained``;
- after each structural change recorded on a transformers model, stores the structure log in its
  ``config.quantization_config``, so Hugging Face's own ``save_pretrained`` writes what
  ``from_pretrained`` needs to rebuild it (instead of loading int8 codes as floats). A transformers
  model compressed as part of a larger module is marked instead: its log belongs to the wrapper, so its
  own ``save_pretrained`` output is refused on load (save the wrapper with ``ts.save``).

Example:
    >>> import sys, torchslim
    >>> "transformers.quantizers.auto" in sys.modules or any(
    ...     isinstance(f, _AfterImport) for f in sys.meta_path)
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch.nn as nn

log = logging.getLogger(__name__)
_HF_REGISTRY = "transformers.quantizers.auto"


class _CallbackLoader(importlib.abc.Loader):
    """Runs a module with its own loader, then ``callback(module)``."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self._loader, self._callback = loader, callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        from torchslim.io.hf import quiet_import_logs

        with quiet_import_logs():  # transformers' registry imports torchao, which is noisy on CPU machines
            self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception as e:  # noqa: BLE001 - a failing hook must never break the user's own import
            log.warning("torchslim: hook after importing %s failed: %s", module.__name__, e)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that calls ``callback(module)`` once module ``name`` has been imported."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; the other finders find the real spec
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        spec.loader = _CallbackLoader(spec.loader, self.callback)
        return spec


def register_transformers(_module: ModuleType | None = None) -> None:
    """Register torchslim's quantization config and quantizer with transformers (idempotent).

    Importing the quantizer module registers them; while that import is itself under way (it imports
    transformers' registry, which runs this hook) the import returns at once and registers on finishing.
    """
    try:
        importlib.import_module("torchslim.integrations.transformers_quantizer")
    except ImportError as e:  # a transformers without external quantizer registration (older than 4.46)
        log.debug("transformers quantizer not registered: %s", e)


def _mark_transformers_model(model: nn.Module) -> None:
    """Keep a compressed transformers model's structure log in its config; a transformers model inside
    a compressed wrapper is marked so that its own ``save_pretrained`` output refuses to load."""
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None:
        return
    from torchslim.integrations import transformers_quantizer

    if isinstance(model, modeling.PreTrainedModel):
        transformers_quantizer.mark_config(model)
        return
    for sub in model.modules():
        if isinstance(sub, modeling.PreTrainedModel):
            transformers_quantizer.mark_part_of(sub, type(model).__name__)


def install() -> None:
    """Hook torchslim into transformers, lazily (see the module docstring)."""
    from torchslim.core.structure import add_record_listener

    add_record_listener(_mark_transformers_model)
    if _HF_REGISTRY in sys.modules:
        register_transformers()
    elif not any(isinstance(f, _AfterImport) and f.name == _HF_REGISTRY for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_HF_REGISTRY, register_transformers))
