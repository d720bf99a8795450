"""Where a saved model came from, recorded so that ``ts.load(dir)`` can rebuild it without a factory.

``ts.save(model, dir, source=...)`` writes a *rebuild record* into ``structure.json``:

- ``{"kind": "factory", "factory": "pkg.mod:build"}`` for ``source="pkg.mod:build"`` (a zero-argument
  function or class importable by that name, the current directory importable as with ``python -m``);
- ``{"kind": "transformers", "architecture": "BertModel", "config": "config.json"}`` for a transformers
  ``PreTrainedModel`` (detected, or ``source="hf:DIR"``); its config is stored in the artifact, so the
  artifact does not depend on ``DIR`` still existing.

Nothing else is recorded: a class that merely *happens* to build with no arguments is not known to
rebuild the saved architecture. ``ts.load`` with no factory rebuilds from this record or says that a
factory is needed. Rebuilding from a ``factory`` record imports and runs that module's code, so
``ts.load`` does it only when asked (``trust_factory=True``): an artifact from someone else could name
any importable callable. A transformers record is data and needs no such trust.

Example:
    >>> parse_source("hf:./my-bert")
    ('hf', './my-bert')
    >>> parse_source("mymodels.cnn:build")
    ('factory', 'mymodels.cnn:build')
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.nn as nn

from torchslim.errors import UnsafeInputError, UsageError

HF_PREFIX = "hf:"
HF_CONFIG_FILE = "config.json"
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def parse_source(source: str) -> tuple[str, str]:
    """``("hf", DIR)`` for ``"hf:DIR"``, ``("factory", spec)`` for ``"pkg.mod:factory"``.

    Raises:
        UsageError: anything else.
    """
    if not isinstance(source, str):
        raise UsageError(f"source must be a string like 'pkg.mod:factory' or 'hf:DIR', not {type(source).__name__}")
    if source.startswith(HF_PREFIX):
        if not source[len(HF_PREFIX) :]:
            raise UsageError("source 'hf:' needs a folder, e.g. 'hf:./my-bert'")
        return "hf", source[len(HF_PREFIX) :]
    if not _FACTORY_RE.match(source):
        raise UsageError(f"source {source!r} is neither 'pkg.mod:factory' nor 'hf:DIR'")
    return "factory", source


@contextmanager
def cwd_importable() -> Iterator[None]:
    """The current directory first on ``sys.path`` for the duration, as ``python -m`` has it."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def resolve_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``"pkg.mod:factory"`` (imported with the current directory importable).

    Raises:
        UsageError: a malformed spec, a module that cannot be imported, a missing or non-callable name,
            or ``__main__`` (a script's functions cannot be imported again by a later process).
    """
    import pkgutil

    kind, _ = parse_source(spec)
    if kind != "factory":
        raise UsageError(f"{spec!r} is not a 'pkg.mod:factory' source")
    module_name = spec.split(":", 1)[0]
    if module_name == "__main__":
        raise UsageError(f"factory {spec!r} lives in __main__; move it into a module to record it as the source")
    try:
        with cwd_importable():
            obj = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as e:
        raise UsageError(f"cannot import factory {spec!r}: {e}") from None
    if not callable(obj):
        raise UsageError(f"factory {spec!r} is a {type(obj).__name__}, not callable")
    return obj


def _is_transformers_model(model: nn.Module) -> bool:
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(model, modeling.PreTrainedModel)


def rebuild_record(model: nn.Module, source: str | None) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The rebuild record for ``model`` saved with ``source``, and the extra files (name -> text) it needs.

    A transformers model always gets its config file (``config.json``, which also makes the artifact a
    folder that ``from_pretrained`` reads); the record names the factory when one was given.

    Raises:
        UsageError: a malformed or unimportable ``source``; ``hf:`` for a model that is not a transformers model.
    """
    files: dict[str, str] = {}
    record: dict[str, Any] | None = None
    if _is_transformers_model(model):
        from torchslim.io.hf import hf_config_json

        files[HF_CONFIG_FILE] = hf_config_json(model)
        record = {"kind": "transformers", "architecture": type(model).__name__, "config": HF_CONFIG_FILE}
    if source is None:
        return record, files
    kind, value = parse_source(source)
    if kind == "hf":
        if record is None:
            raise UsageError(f"source {source!r}: the model is a {type(model).__name__}, not a transformers model")
        return record, files
    resolve_factory(value)  # recorded only if a later process can import it
    return {"kind": "factory", "factory": value}, files


def rebuild_model(
    record: Any, root: Path, read_json: Callable[[Path], Any], *, trust_factory: bool = False
) -> nn.Module:
    """Build the uncompressed architecture an artifact's rebuild ``record`` names (before its ops replay).

    A transformers record is data (a config, rebuilt without custom code). A factory record names Python
    code: it is imported and called only with ``trust_factory=True``, since an artifact from someone else
    could name any importable callable.

    Raises:
        UsageError: no record (the artifact needs a factory), or a factory that no longer imports.
        UnsafeInputError: a malformed record, a factory record without ``trust_factory``, or a transformers
            config claiming more layers than the artifact stores tensors or more memory than is available.
        UnsupportedModelError: a transformers architecture this installation cannot build.
    """
    if record is None:
        raise UsageError(
            f"{root} does not record how to rebuild its model; pass factory= (a function building the "
            "uncompressed model), or save with source='pkg.mod:factory'"
        )
    if not isinstance(record, dict) or record.get("kind") not in ("factory", "transformers"):
        raise UnsafeInputError(f"{root}: malformed rebuild record {str(record)[:200]}")
    if record["kind"] == "factory":
        spec = record.get("factory")
        if not isinstance(spec, str):
            raise UnsafeInputError(f"{root}: malformed factory record {str(record)[:200]}")
        if not trust_factory:
            raise UnsafeInputError(
                f"{root} names the Python factory {spec[:200]!r} to rebuild its model; loading would import and "
                "run that code: pass factory= yourself, or trust_factory=True if you trust where the artifact "
                f"came from (command line: --model {spec[:200]})"
            )
        built = resolve_factory(spec)()
        if not isinstance(built, nn.Module):
            raise UsageError(f"factory {spec!r} returned a {type(built).__name__}, not an nn.Module")
        return built
    name = record.get("config")
    if name != HF_CONFIG_FILE or not (root / HF_CONFIG_FILE).is_file():
        raise UnsafeInputError(f"{root}: the transformers rebuild record needs {HF_CONFIG_FILE} in the artifact")
    from torchslim.io.config_bound import stored_tensor_count
    from torchslim.io.hf import model_from_config_dict

    config = read_json(root / HF_CONFIG_FILE)
    if not isinstance(config, dict):
        raise UnsafeInputError(f"{root / HF_CONFIG_FILE} is not a JSON object")
    architecture = record.get("architecture")
    # The config states sizes; it is bounded by the tensors the artifact stores before anything is built.
    stored = stored_tensor_count(sorted(root.glob("*.safetensors")))
    return model_from_config_dict(
        config, architecture=architecture if isinstance(architecture, str) else None, stored_tensors=stored
    )
