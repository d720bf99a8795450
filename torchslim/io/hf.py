"""Hugging Face models in and out: local folders loaded offline, example inputs, configs inside artifacts.

- :func:`load_hf_model` loads a local transformers folder (``config.json`` + weights) or a
  sentence-transformers folder (its ``Transformer`` module, named in ``modules.json``), never from the
  network, by the class its config names in ``architectures`` (``AutoModel`` when that is not a
  transformers class), in eval mode. ``--model hf:DIR`` on the command line calls it.
- :func:`hf_example_inputs` makes keyword inputs (``input_ids``, ``attention_mask``) from the folder's
  tokenizer, or random ids within the vocabulary (``pixel_values`` for an image model).
- :func:`hf_config_json` / :func:`model_from_config_dict` store a model's config inside a torchslim
  artifact and rebuild the architecture from it (no weights are downloaded: ``ts.load`` fills them).

Example:
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...                              num_attention_heads=2, intermediate_size=32))
    >>> inputs = hf_example_inputs(model, batch=2, seq=8)
    >>> sorted(inputs), tuple(inputs["input_ids"].shape), int(inputs["input_ids"].max()) < 50
    (['attention_mask', 'input_ids'], (2, 8), True)
    >>> rebuilt = model_from_config_dict(json.loads(hf_config_json(model)))
    >>> type(rebuilt).__name__, rebuilt.config.hidden_size
    ('BertModel', 16)
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError

from torchslim.errors import TorchslimError, UnsafeInputError, UnsupportedModelError, UsageError
from torchslim.io.config_bound import (
    check_fits,
    check_layers,
    load_bytes_per_param,
    meta_size,
    stored_tensor_count,
)

log = logging.getLogger(__name__)

QUANT_METHOD = "torchslim"
QUANT_FORMAT_VERSION = 1
_ST_MODULES = "modules.json"
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_INDEX = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
MAX_CONFIG_BYTES = 20_000_000
# What transformers' config and model code raise on a config whose values it cannot use (wrong types,
# sizes that do not divide, numbers out of range): all mean "this config cannot be built". torch checks
# some module arguments with assert (an embedding's padding_idx).
_BUILD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, OverflowError,
                 ZeroDivisionError, NotImplementedError, RecursionError, AssertionError)  # fmt: skip


def _build_errors() -> tuple[type[BaseException], ...]:
    """:data:`_BUILD_ERRORS` and huggingface_hub's config validation error (transformers 5 configs are strict)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: configs are not validated
        return _BUILD_ERRORS
    return (*_BUILD_ERRORS, StrictDataclassError)


# Loggers that print import-time noise when transformers' quantizer registry imports torchao on a CPU
# machine: torchao's CUDA-only extensions "failed to load", and torch's pytree deprecation notes on
# torchao's enums. Neither concerns a torchslim user; they are raised to ERROR for that import only.
_NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_import_logs() -> Iterator[None]:
    """Raise :data:`_NOISY_IMPORT_LOGGERS` to ERROR for the duration (an import), then restore them."""
    loggers = [logging.getLogger(name) for name in _NOISY_IMPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UsageError("Hugging Face models need transformers: pip install 'torchslim[nlp]'") from None
    try:  # a torchslim folder loads through its quantizer: ``import torchslim`` hooked its registration
        # (torchslim.integrations) to this import, or registered it already when it was imported before
        with quiet_import_logs():
            importlib.import_module("transformers.quantizers.auto")
    except ImportError:  # a transformers without external quantizer registration
        pass
    return transformers


def model_folder(path: str | Path) -> Path:
    """The transformers folder inside ``path``: ``path`` itself, or a sentence-transformers folder's
    ``Transformer`` module folder (from ``modules.json``).

    Raises:
        UsageError: ``path`` is not a folder, or holds no ``config.json``.
        UnsafeInputError: a malformed ``modules.json``.
    """
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"Hugging Face folder {root} does not exist")
    folder = root
    modules = root / _ST_MODULES
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UnsafeInputError(f"{modules} is not valid JSON: {e}") from None
        listed = entries if isinstance(entries, list) else []  # a number or a string would not iterate as entries
        found = [e for e in listed if isinstance(e, dict) and e.get("type") == _ST_TRANSFORMER]
        if not found:
            raise UnsafeInputError(f"{modules} names no {_ST_TRANSFORMER} module")
        sub = str(found[0].get("path", ""))
        if sub.startswith(("/", "\\")) or ".." in Path(sub).parts:
            raise UnsafeInputError(f"{modules}: module path {sub!r} leaves the folder")
        folder = root / sub
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder} has no config.json: not a transformers model folder")
    return folder


def _architecture_class(transformers: Any, names: Any) -> Any:
    """The first transformers ``PreTrainedModel`` class named in ``names`` (a config's ``architectures``)."""
    if isinstance(names, str):
        names = [names]
    for name in names if isinstance(names, (list, tuple)) else ():
        cls = getattr(transformers, str(name), None) if str(name).isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return None


def load_hf_model(path: str | Path) -> nn.Module:
    """Load the model of a local transformers or sentence-transformers folder, offline, in eval mode.

    The class is the one the config names in ``architectures`` (e.g. ``BertForSequenceClassification``),
    or ``AutoModel`` for the config's model type. A folder written by ``ts.save`` loads compressed.

    Before anything is allocated the config is bounded (:mod:`torchslim.io.config_bound`): no more
    layers than the safetensors files hold tensors, and a size (in the config's dtype) within the memory
    available.

    Raises:
        UsageError: no such folder, no ``config.json``, no weights, or transformers missing.
        UnsafeInputError: a ``config.json`` that is not a JSON object, claims more layers than the weights
            hold, or weights whose shapes differ from it.
        UnsupportedModelError: an architecture this transformers cannot build (unknown model type,
            custom code), or one that does not fit in the memory available.
    """
    folder = model_folder(path)
    transformers = _transformers()
    config = _read_config(transformers, folder)
    cls = _architecture_class(transformers, getattr(config, "architectures", None)) or transformers.AutoModel
    where = str(folder / "config.json")
    _check_index(folder)
    check_layers(config.to_dict(), stored_tensor_count(sorted(folder.glob("*.safetensors"))), where=where,
                 error=UnsafeInputError)  # fmt: skip
    build = (lambda: cls(config)) if cls is not transformers.AutoModel else (lambda: cls.from_config(config))
    _bounded(build, where, too_big=UnsupportedModelError, bytes_per_param=load_bytes_per_param(config.to_dict()))
    try:
        model = cls.from_pretrained(str(folder), config=config, local_files_only=True)
    except OSError as e:
        raise UsageError(f"{folder}: cannot load the weights ({_first_line(e)})") from None
    except RuntimeError as e:  # transformers refuses weights whose shapes differ from the config's
        raise UnsafeInputError(f"{folder}: the weights do not match config.json ({_first_line(e)})") from None
    except SafetensorError as e:
        raise UnsafeInputError(f"{folder}: a weight file is not valid safetensors ({_first_line(e)})") from None
    except _build_errors() as e:
        raise UnsupportedModelError(f"{folder}: transformers cannot build this model ({_first_line(e)})") from None
    return model.eval()


def _read_config(transformers: Any, folder: Path) -> Any:
    """The folder's config through ``AutoConfig``, after refusing an oversized or too deeply nested file."""
    _read_json_object(folder / "config.json")
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, *_build_errors()) as e:
        raise UnsupportedModelError(f"{folder}: transformers cannot read this config ({_first_line(e)})") from None


def _check_index(folder: Path) -> None:
    """Refuse a ``model.safetensors.index.json`` whose ``weight_map`` names a shard that is not a file here."""
    path = folder / _ST_INDEX
    if not path.is_file():
        return
    index = _read_json_object(path)
    shards = index.get("weight_map")
    if not isinstance(shards, dict) or not all(isinstance(v, str) for v in shards.values()):
        raise UnsafeInputError(f"{path}: weight_map is not an object of file names")
    for name in set(shards.values()):
        if Path(name).name != name or name in ("", ".", "..") or not (folder / name).is_file():
            raise UnsafeInputError(f"{path} names the shard {name[:100]!r}, which is not a file in {folder}")


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, refusing (exit 4) an oversized, malformed or too deeply nested file."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UnsafeInputError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UnsafeInputError(f"{path} is nested too deeply to be read") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise UnsafeInputError(f"{path} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise UnsafeInputError(f"{path} is not a JSON object")
    return data


def _bounded(build: Any, where: str, *, too_big: type[TorchslimError], bytes_per_param: float = 4) -> None:
    """Size ``build()`` on the meta device and refuse it (``too_big``) over the memory bound (see config_bound)."""
    try:
        numel = meta_size(build)
    except _build_errors() as e:
        raise UnsupportedModelError(f"{where}: transformers cannot build this model ({_first_line(e)})") from None
    check_fits(numel, where=where, error=too_big, bytes_per_param=bytes_per_param)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _tokenizer(folder: Path) -> Any:
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        log.info("no usable tokenizer in %s (%s); using random ids", folder, _first_line(e))
        return None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok if tok.pad_token is not None else None


def hf_example_inputs(model_or_path: nn.Module | str | Path, batch: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    """Keyword example inputs for a transformers model or folder: ``{"input_ids", "attention_mask"}``.

    From the folder's tokenizer when it has one (the same sentence, padded or cut to ``seq`` tokens),
    else random ids in ``[0, vocab_size)`` (seeded: the same inputs every call) and a mask of ones; an
    image model (a config with ``image_size`` and ``num_channels``) gets ``{"pixel_values"}``.

    Raises:
        UsageError: a path that is not a transformers folder.
        UnsupportedModelError: a config with neither a vocabulary nor an image size.
    """
    if isinstance(model_or_path, (str, Path)):
        folder = model_folder(model_or_path)
        config = _read_config(_transformers(), folder)
        tok = _tokenizer(folder)
    else:
        config = getattr(model_or_path, "config", None)
        if config is None:
            raise UnsupportedModelError(f"{type(model_or_path).__name__} has no transformers config")
        name = getattr(config, "_name_or_path", "") or ""
        tok = _tokenizer(Path(name)) if name and Path(name).is_dir() else None
    positions = _size(config, "max_position_embeddings") or _size(config, "n_positions")
    seq = min(seq, positions or seq)
    gen = torch.Generator().manual_seed(0)
    if tok is not None:
        text = " ".join(["the quick brown fox jumps over the lazy dog"] * seq)
        enc = tok([text] * batch, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    vocab = _size(config, "vocab_size", limit=_MAX_INDEX)
    if vocab:
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    size, channels = _size(config, "image_size"), _size(config, "num_channels")
    if size and channels:
        if batch * channels * size * size > _MAX_EXAMPLE_NUMEL:
            raise UnsafeInputError(
                f"config image_size {size} x num_channels {channels} is too large for example inputs"
            )
        return {"pixel_values": torch.randn(batch, channels, size, size, generator=gen)}
    raise UnsupportedModelError(f"cannot make example inputs for {type(config).__name__}: no vocab_size or image_size")


_MAX_INDEX = 2**63 - 1  # torch.randint's bound: int64
_MAX_EXAMPLE_NUMEL = 1 << 28


def _size(config: Any, name: str, limit: int = 1 << 31) -> int | None:
    """The config's integer ``name`` (None when absent or 0); UnsafeInputError for any other type or over ``limit``."""
    value = getattr(config, name, None)
    if value is None or value == 0:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
        raise UnsafeInputError(f"config {name} is {str(value)[:50]}, not a positive integer up to {limit}")
    return value


def hf_config_json(model: nn.Module) -> str:
    """The config of a transformers ``model`` as ``config.json`` text for a torchslim artifact.

    ``architectures`` names the model's class; ``quantization_config`` routes ``from_pretrained`` through
    torchslim's quantizer (which replays the artifact's ``structure.json``); the source folder's path
    (``_name_or_path``) is left out. Keys are sorted: the same model gives the same bytes.
    """
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("_name_or_path", None)
    config["architectures"] = [type(model).__name__]
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "format_version": QUANT_FORMAT_VERSION}
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def model_from_config_dict(
    config: dict[str, Any], architecture: str | None = None, *, stored_tensors: int | None = None
) -> nn.Module:
    """A freshly initialized transformers model (eval mode) for a saved config dict; nothing is downloaded.

    The class is ``architecture`` (or the config's ``architectures``) when transformers has it, else
    ``AutoModel`` for the config's ``model_type``, in the config's ``dtype``. Custom code (``auto_map``)
    is never run. The config is an untrusted artifact's: it may state no more layers than
    ``stored_tensors`` (the tensors in the artifact's weights), and the model it describes must fit in the
    memory available (:mod:`torchslim.io.config_bound`), before anything is allocated.

    Raises:
        UnsupportedModelError: an unknown model type, a custom-code config, or one transformers cannot build.
        UnsafeInputError: a config over the layer or memory bound.
    """
    transformers = _transformers()
    data = {k: v for k, v in config.items() if k not in ("quantization_config", "_name_or_path")}
    if "auto_map" in data:
        raise UnsupportedModelError("the saved config needs custom code (auto_map); torchslim never runs it")
    model_type = data.get("model_type")
    mapping = transformers.models.auto.configuration_auto.CONFIG_MAPPING
    if not isinstance(model_type, str) or model_type not in mapping:
        raise UnsupportedModelError(f"transformers {transformers.__version__} has no model type {model_type!r}")
    try:
        cfg = mapping[model_type].from_dict(data)
    except _build_errors() as e:
        raise UnsupportedModelError(f"cannot build a {model_type} config: {_first_line(e)}") from None
    names = [architecture] if architecture else data.get("architectures")
    cls = _architecture_class(transformers, names)
    where = f"the saved {model_type} config"
    check_layers(data, stored_tensors, where=where, error=UnsafeInputError)
    build = (lambda: cls(cfg)) if cls is not None else (lambda: transformers.AutoModel.from_config(cfg))
    _bounded(build, where, too_big=UnsafeInputError)
    try:
        model = build()
    except _build_errors() as e:
        raise UnsupportedModelError(f"{where}: transformers cannot build this model ({_first_line(e)})") from None
    dtype = getattr(cfg, "dtype", None)
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype != torch.float32:
        model = model.to(dtype)  # loaded in that dtype (from_pretrained(dtype=...)) before compression
    return model.eval()
