"""A Hugging Face causal LM as a weightless skeleton plus memory-mapped shards, materialised part by part.

:func:`open_skeleton` builds the model of a local transformers folder with every parameter on the
``meta`` device (no memory), keeps buffers real (rotary frequencies are computed at construction and
are not in the checkpoint), and indexes the folder's safetensors shards. :meth:`Skeleton.materialise`
fills one submodule's parameters from the shards (read through ``safetensors.safe_open``, which maps
the files); :meth:`Skeleton.release` sends them back to ``meta``. :func:`find_blocks` finds the decoder
blocks generically: the longest ``nn.ModuleList`` whose entries are all of one class.

Example:
    >>> import torch.nn as nn
    >>> m = nn.Module()
    >>> m.body = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    >>> m.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    >>> find_blocks(m)[0]
    'body'
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import UnsafeInputError, UnsupportedModelError, UsageError
from torchslim.io.config_bound import check_layers, stored_tensor_count
from torchslim.io.hf import model_folder
from torchslim.structured.layer_drop import longest_block_list

__all__ = ["Skeleton", "empty_parameters", "find_blocks", "open_skeleton"]

_INDEX = "model.safetensors.index.json"


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Inside: every ``nn.Parameter`` registered on a module goes to the ``meta`` device; buffers stay real.

    Hand-written (a dozen lines) because ``accelerate.init_empty_weights(include_buffers=False)``, which
    does the same, is not a torchslim dependency. ``torch.device("meta")`` alone would also put the
    non-persistent buffers (rotary frequencies) on ``meta``, and they are not in the checkpoint.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":  # one already on meta is a tied weight: kept as is
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, list)`` of the longest ``nn.ModuleList`` (at least 2 entries) whose entries share one class.

    Raises:
        UnsupportedModelError: no such list (the model is not block-structured).
    """
    best = longest_block_list(model)
    if best is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no list of identical blocks; --sequential needs a block-structured model"
        )
    return best


@dataclass
class Skeleton:
    """The weightless model of a folder and where each of its tensors lives in the shards."""

    folder: Path
    model: nn.Module
    where: dict[str, Path]  # tensor name -> shard file
    _open: dict[Path, Any] = field(default_factory=dict)

    def shard_bytes(self) -> int:
        """Bytes of the safetensors shards on disk."""
        return sum(p.stat().st_size for p in set(self.where.values()))

    def _reader(self, path: Path) -> Any:
        from safetensors import safe_open

        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="pt")  # memory-maps the shard
        return self._open[path]

    def read(self, name: str) -> torch.Tensor:
        """The stored tensor ``name`` (a copy in memory, in its stored dtype)."""
        if name not in self.where:
            raise UnsafeInputError(f"{self.folder}: tensor {name!r} is missing from the safetensors shards")
        return self._reader(self.where[name]).get_tensor(name)

    def materialise(self, prefix: str) -> nn.Module:
        """Fill the parameters (and stored buffers) of submodule ``prefix`` from the shards; returns it.

        Raises:
            UnsafeInputError: a tensor is missing or has another shape than the config gives it.
        """
        try:
            return self._materialise(prefix)
        finally:  # drop the maps: the shard pages read stay out of this process's resident memory
            self.close()

    def _materialise(self, prefix: str) -> nn.Module:
        module = self.model.get_submodule(prefix)
        dot = f"{prefix}." if prefix else ""
        with torch.no_grad():
            for name, param in list(module.named_parameters(recurse=True)):
                owner, _, leaf = name.rpartition(".")
                value = self.read(dot + name)
                if tuple(value.shape) != tuple(param.shape):
                    raise UnsafeInputError(
                        f"{self.folder}: {dot + name} is {tuple(value.shape)}, the config gives {tuple(param.shape)}"
                    )
                module.get_submodule(owner)._parameters[leaf] = nn.Parameter(value, requires_grad=param.requires_grad)
            for name, buf in list(module.named_buffers(recurse=True)):
                full = dot + name
                owner, _, leaf = name.rpartition(".")
                sub = module.get_submodule(owner)
                if leaf not in sub._non_persistent_buffers_set and full in self.where:
                    sub._buffers[leaf] = self.read(full).to(buf.dtype)
        return module

    def release(self, prefix: str) -> None:
        """Send submodule ``prefix`` back to ``meta`` (its memory is freed)."""
        self.model.get_submodule(prefix).to("meta")

    def close(self) -> None:
        self._open.clear()


def _shard_index(folder: Path) -> dict[str, Path]:
    """Tensor name -> shard path, from the index file or the single ``model.safetensors``."""
    from safetensors import safe_open

    index = folder / _INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UnsafeInputError(f"{index} is not a valid shard index ({e})") from None
        files = {}
        for name, shard in weight_map.items():
            if Path(shard).name != shard:
                raise UnsafeInputError(f"{index}: shard {shard!r} leaves the folder")
            files[str(name)] = folder / shard
        return files
    single = folder / "model.safetensors"
    if not single.is_file():
        raise UsageError(f"{folder}: --sequential reads safetensors weights; found no model.safetensors or {_INDEX}")
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open has keys(), no __iter__)


def open_skeleton(path: str | Path) -> Skeleton:
    """The weightless model of the transformers folder ``path`` and its shard index.

    Raises:
        UsageError: not a transformers folder, or no safetensors weights.
        UnsupportedModelError: transformers cannot build the architecture.
    """
    folder = model_folder(path)
    where = _shard_index(folder)
    cls, config = _model_class(folder)
    shards = sorted(set(where.values()))
    check_layers(
        config.to_dict(), stored_tensor_count(shards), where=str(folder / "config.json"), error=UnsafeInputError
    )
    with empty_parameters():
        try:
            model = cls._from_config(config)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UnsupportedModelError(f"{folder}: transformers cannot build this model ({e})") from None
    return Skeleton(folder, model.eval(), where)


def _model_class(folder: Path) -> tuple[Any, Any]:
    """``(class, config)``: the transformers class the folder's config names in ``architectures``.

    Raises:
        UnsafeInputError: a config.json that is not a JSON object.
        UnsupportedModelError: custom code, a config transformers cannot read, or no transformers class named.
    """
    import transformers

    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise UnsafeInputError(f"{folder}/config.json is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise UnsafeInputError(f"{folder}/config.json is not a JSON object")
    if "auto_map" in data:
        raise UnsupportedModelError(f"{folder}/config.json needs custom code (auto_map); torchslim never runs it")
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnsupportedModelError(f"{folder}: transformers cannot read this config ({e})") from None
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, str(name), None) if str(name).isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls, config
    raise UnsupportedModelError(f"{folder}: config.json names no transformers model class in 'architectures'")
