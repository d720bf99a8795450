"""torchslim as a transformers quantization method: ``from_pretrained`` rebuilds torchslim-compressed models.

A folder whose ``config.json`` holds ``"quantization_config": {"quant_method": "torchslim", ...}`` is
loaded by :class:`TorchslimHfQuantizer` (registered through ``register_quantization_config`` /
``register_quantizer`` once ``import torchslim`` has run):

1. before the weights: the structure log is replayed on the freshly built model (pruned shapes, int8 /
   int4 modules, casts): from the artifact's ``structure.json`` (a folder written by ``ts.save``, its
   manifest checksums checked) or from ``quantization_config["structure"]`` (a folder written by
   Hugging Face's own ``save_pretrained`` of a compressed model: :func:`mark_config` keeps the log there);
2. transformers loads the weights into those modules;
3. after: every tensor is loaded again by torchslim, strictly (missing, extra, mis-shaped or
   mis-typed tensors are refused with every problem listed), so a partial or wrong load fails loudly
   instead of leaving int8 codes in float layers or random weights in pruned ones.

Importing this module imports transformers' quantizer registry and registers there;
``torchslim.integrations`` imports it only once transformers itself has imported that registry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import UnsafeInputError, UsageError
from torchslim.io.artifact import MANIFEST_FILE, SPARSE_PREFIX, STRUCTURE_FILE, fill_exact, read_artifact
from torchslim.io.hf import QUANT_FORMAT_VERSION, QUANT_METHOD
from torchslim.io.weights import load_state_dict_file


class TorchslimQuantizationConfig(QuantizationConfigMixin):
    """``quantization_config`` of a torchslim-compressed transformers model.

    Args:
        structure: the structure log (``ts.save``'s ``structure.json`` ops); None when it is in the
            folder's ``structure.json`` (a ``ts.save`` artifact).
        format_version: the torchslim artifact format.
        part_of: the class of the wrapper this model was compressed inside (its log is the wrapper's:
            such a checkpoint is refused).
    """

    def __init__(
        self,
        structure: list[dict[str, Any]] | None = None,
        format_version: int = 1,
        part_of: str | None = None,
        **_: Any,
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.structure = structure
        self.part_of = part_of


class TorchslimHfQuantizer(HfQuantizer):
    """Loads torchslim-compressed checkpoints (``pre_quantized`` only: compress with ``ts.compress_``)."""

    requires_calibration = (
        True  # transformers refuses quantization_config=TorchslimQuantizationConfig() on a float model
    )

    def __init__(self, quantization_config: TorchslimQuantizationConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self._folder: Path | None = None
        self._tensors: dict[str, torch.Tensor] | None = None
        self._aliases: dict[str, str] = {}
        self._checkpoints: list[str] = []

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        version = getattr(self.quantization_config, "format_version", 1)
        if not isinstance(version, int) or version > QUANT_FORMAT_VERSION:
            raise UnsafeInputError(f"torchslim quantization_config format {version!r} is newer than this torchslim")
        part_of = getattr(self.quantization_config, "part_of", None)
        if part_of:
            raise UnsafeInputError(
                f"this {type(model).__name__} was compressed inside a {part_of}, whose structure log it does not "
                f"hold; save the {part_of} with ts.save and load it with ts.load"
            )
        files = list(kwargs.get("checkpoint_files") or [])
        if not files:
            raise UsageError(
                "a torchslim model loads from its folder's files (from_pretrained(state_dict=...) is not supported)"
            )
        self._folder = Path(files[0]).parent
        if (self._folder / MANIFEST_FILE).is_file() and (self._folder / STRUCTURE_FILE).is_file():
            with torch.device("cpu"):  # transformers builds the model under torch.device("meta")
                structure, self._tensors = read_artifact(self._folder)
            ops, self._aliases = structure["ops"], structure["aliases"]
            _ignore_torchslim_only_keys(model, structure)
        elif isinstance(self.quantization_config.structure, list):
            ops, self._checkpoints = self.quantization_config.structure, files
        else:
            raise UnsafeInputError(
                f"{self._folder}: quantization_config names torchslim but holds no structure and the folder "
                f"has no {STRUCTURE_FILE}"
            )
        replay_ops(model, ops)
        return model

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        if self._tensors is not None:
            tensors, aliases = self._tensors, self._aliases
        else:
            tensors = {}
            for f in self._checkpoints:
                tensors.update(load_state_dict_file(f))
            aliases = _tied_aliases(model, tensors)
        _own_memory(model)
        fill_exact(model, tensors, aliases, str(self._folder))
        self._tensors = None
        self.quantization_config.structure = structure_ops(model)  # a later save_pretrained needs no structure.json
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def _own_memory(model: nn.Module) -> None:
    """Give every parameter and buffer freshly allocated memory (tied parameters stay one object).

    transformers leaves tensors in the memory-mapped checkpoint, at whatever offset the file puts them;
    torch's int8 CPU kernel (``_weight_int8pack_mm``) crashes on such unaligned weights.
    """
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.clone()


def _ignore_torchslim_only_keys(model: nn.Module, structure: dict[str, Any]) -> None:
    """Keep transformers' load report quiet about what torchslim stores its own way (sparse parts, aliases)."""
    hidden = list(structure.get("sparse", {})) + list(structure.get("aliases", {}))
    missing = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    unexpected = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    model._keys_to_ignore_on_load_missing = missing | {f"^{re.escape(n)}$" for n in hidden}
    model._keys_to_ignore_on_load_unexpected = unexpected | {f"^{re.escape(SPARSE_PREFIX)}"}


def _tied_aliases(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """``missing name -> stored name`` for the model's tensors that a checkpoint holds once (tied weights)."""
    state = model.state_dict()
    by_storage: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in state.items():
        if name in tensors and t.numel():
            by_storage.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)), name)
    aliases = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if name not in tensors and t.numel() and key in by_storage:
            aliases[name] = by_storage[key]
    return aliases


def mark_config(model: nn.Module) -> None:
    """Store ``model``'s structure log in ``model.config.quantization_config`` (a transformers model), and
    untie the weights a swap has separated (e.g. an int8 ``lm_head`` beside a float embedding table)."""
    register()
    model.config.quantization_config = TorchslimQuantizationConfig(structure=structure_ops(model))
    _drop_broken_ties(model)


def mark_part_of(model: nn.Module, wrapper: str) -> None:
    """Mark a transformers ``model`` compressed inside a ``wrapper`` module: its checkpoints refuse to load."""
    register()
    model.config.quantization_config = TorchslimQuantizationConfig(part_of=wrapper)
    _drop_broken_ties(model)


def _drop_broken_ties(model: nn.Module) -> None:
    """Forget tied pairs whose weight is no longer a Parameter (its module was swapped), in the model and its config.

    transformers would otherwise tie them again on load (failing on the swapped module) and leave the
    tied copy out of ``save_pretrained``'s checkpoint.
    """
    tied = getattr(model, "all_tied_weights_keys", None)
    if not tied:
        return
    params = dict(model.named_parameters(remove_duplicate=False))
    broken = {t for t, s in tied.items() if t not in params or s not in params}
    if broken:
        model.all_tied_weights_keys = {t: s for t, s in tied.items() if t not in broken}
        if getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False


def register() -> None:
    """Register the config and quantizer under ``quant_method: "torchslim"`` (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(TorchslimQuantizationConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(TorchslimHfQuantizer)


register()
