"""``ts.save`` / ``ts.load``: safe, atomic, reproducible artifacts for every technique.

Layout of an artifact folder::

    model.safetensors   every tensor in a plain dtype (int8, packed uint8, bf16, fp32, ...)
    structure.json      the structure log (pruning plans, module swaps, casts; see core/structure.py)
                        and tied-weight aliases
                        and how to rebuild the model without a factory (see io/source.py)
    config.json         a transformers model's config (also makes the folder ``from_pretrained``-able)
    recipe.yaml         the recipe that produced the model (when given)
    report.json         the measured report (when given)
    manifest.json       written last: sha256 of every file, torchslim and torch versions, seed, source

``load`` builds the model with the user's factory, or without one from the recorded source (a
``pkg.mod:factory`` or the stored transformers config), replays the structure log (which recreates
pruned shapes and quantized module classes with empty tensors), checks every checksum and tensor
(missing, extra, shape/dtype mismatch, NaN/Inf: all listed at once), then loads the weights strictly.
Nothing is ever unpickled.

Example:
    >>> import tempfile, torch, torch.nn as nn
    >>> import torchslim as ts
    >>> build = lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> m = ts.compress_(build(), ts.CastDtype("bfloat16"))
    >>> out = tempfile.mkdtemp() + "/art"
    >>> ts.save(m, out)
    >>> m2 = ts.load(out, factory=build)
    >>> torch.equal(m2(torch.ones(1, 4)), m(torch.ones(1, 4)))
    True
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchslim.core.inference import ordinary_tensors_, outside_inference_mode
from torchslim.core.structure import replay_ops, structure_ops
from torchslim.errors import TorchslimError, UnsafeInputError, UsageError
from torchslim.io.atomic import atomic_dir, describe_os_error, sha256_file
from torchslim.io.source import rebuild_model, rebuild_record
from torchslim.io.sparse import decode_sparse, encode_sparse

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STRUCTURE_FILE = "structure.json"
MANIFEST_FILE = "manifest.json"
MAX_JSON_BYTES = 20_000_000
SPARSE_PREFIX = "__sparse__."
# safetensors refuses headers over 100 MB itself; we refuse earlier and say why.
MAX_HEADER_BYTES = 100_000_000


def encode_state(
    model: nn.Module, *, sparse: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, dict[str, Any]]]:
    """The tensors an artifact stores, tied-weight aliases (``alias -> stored name``) and sparse entries.

    Tied tensors (same storage, same view) are stored once: safetensors refuses shared memory and the
    file should not hold the bytes twice. Tensors with many zeros (pruned weights) are stored as
    ``__sparse__.<name>.values`` plus a bitmask or indices (see io/sparse.py) when ``sparse``.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        if not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    sparse_meta: dict[str, dict[str, Any]] = {}
    if sparse:
        for name in list(tensors):
            enc = encode_sparse(tensors[name])
            if enc is not None:
                del tensors[name]
                sparse_meta[name] = enc.meta
                for part, value in enc.tensors.items():
                    tensors[f"{SPARSE_PREFIX}{name}.{part}"] = value
    return tensors, aliases, sparse_meta


def artifact_tensor_bytes(model: nn.Module) -> int:
    """Exact size in bytes of the ``model.safetensors`` that :func:`save` writes for ``model``."""
    tensors, _, _ = encode_state(model)
    return len(_serialize(tensors))


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    # No safetensors metadata: its header map is written in a random order, breaking byte-identical artifacts.
    return st_save(tensors)


def save(
    model: nn.Module,
    out: str | Path,
    *,
    force: bool = False,
    recipe: Any = None,
    report: dict[str, Any] | None = None,
    seed: int = 0,
    sparse: bool = True,
    source: str | None = None,
) -> None:
    """Write ``model`` as an artifact folder, atomically, then verify it by reading it back.

    Args:
        model: the (compressed) model.
        out: the artifact folder; must be absent or empty unless ``force``.
        force: replace an existing artifact (only once the new one is complete).
        recipe: a ``Recipe`` (written as ``recipe.yaml``) or None.
        report: a JSON-able report (``report.json``) or None.
        seed: recorded in the manifest.
        sparse: store tensors with many zeros compactly (values + bitmask or indices).
        source: where the model came from, ``"pkg.mod:factory"`` or ``"hf:DIR"`` (recorded in the
            manifest; a factory is recorded so that ``load(out)`` needs none). A transformers model's
            config is stored whatever ``source`` says.

    Raises:
        OutputExistsError: ``out`` is not empty and ``force`` is False, or an I/O error (disk full).
        UsageError: a malformed ``source``, or a factory that cannot be imported again.
    """
    from torchslim.version import __version__

    rebuild, extra_files = rebuild_record(model, source)
    tensors, aliases, sparse_meta = encode_state(model, sparse=sparse)
    data = _serialize(tensors)
    structure = {
        "format_version": FORMAT_VERSION,
        "ops": structure_ops(model),
        "aliases": aliases,
        "sparse": sparse_meta,
    }
    if rebuild is not None:
        structure["rebuild"] = rebuild
    manifest = {
        "format_version": FORMAT_VERSION,
        "torchslim": __version__,
        "torch": torch.__version__.split("+")[0],
        "seed": seed,
    }
    if source is not None:
        manifest["source"] = source
    with atomic_dir(out, force=force, manifest=manifest) as tmp:
        (tmp / MODEL_FILE).write_bytes(data)
        # Compact: pruning plans hold long kept-index lists (one number per line would triple the file).
        (tmp / STRUCTURE_FILE).write_text(compact_json(structure) + "\n", encoding="utf-8")
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if recipe is not None:
            (tmp / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        if report is not None:
            (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        # Verify before the rename: the bytes on disk decode to exactly the tensors we meant to write.
        back = _read_tensors(tmp / MODEL_FILE)
        if back.keys() != tensors.keys() or not all(torch.equal(back[k], tensors[k]) for k in tensors):
            raise UnsafeInputError(f"verification of {out} failed: the written tensors differ")


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise UnsafeInputError(f"{path} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UnsafeInputError(f"{path} is nested too deeply to be read") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise UnsafeInputError(f"{path} is not valid JSON: {str(e)[:200]}") from None


def parse_safetensors(data: bytes, source: str = "safetensors") -> dict[str, torch.Tensor]:
    """Decode safetensors bytes, refusing oversized headers and malformed files with UnsafeInputError."""
    if len(data) < 8:
        raise UnsafeInputError(f"{source}: truncated ({len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or header_len > len(data) - 8:
        raise UnsafeInputError(f"{source}: header length {header_len} is larger than the file or the limit")
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError, OverflowError) as e:
        raise UnsafeInputError(f"{source}: not a valid safetensors file ({e})") from None


def read_safetensors_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; its declared header length is checked against
    :data:`MAX_HEADER_BYTES` and the file's size from its first 8 bytes, before the file is read whole.

    Raises:
        UnsafeInputError: a header larger than the limit or the file, or a malformed file.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> _ = path.write_bytes(st_save({"w": torch.ones(2)}))
        >>> read_safetensors_file(path)["w"]
        tensor([1., 1.])
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (header_len,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise UnsafeInputError(f"{path}: header length {header_len} is larger than the file or the limit")
        data = head + f.read()
    return parse_safetensors(data, str(path))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors_file(path)


def _check_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise UnsafeInputError(f"{root} has no {MANIFEST_FILE}: not a complete torchslim artifact")
    manifest = _read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or MODEL_FILE not in files or STRUCTURE_FILE not in files:
        raise UnsafeInputError(f"{path} is malformed: it must list {MODEL_FILE} and {STRUCTURE_FILE}")
    problems = []
    for name, digest in files.items():
        f = root / str(name)
        try:
            if "/" in str(name) or "\\" in str(name) or str(name).startswith("."):
                problems.append(f"{name:.80}: not a plain file name")
            elif not f.is_file():
                problems.append(f"{name:.80}: listed in the manifest but missing")
            elif sha256_file(f) != digest:
                problems.append(f"{name:.80}: checksum mismatch (file changed after it was written)")
        except OSError as e:  # a name too long for the file system, an unreadable file
            problems.append(f"{name:.80}: cannot be read ({describe_os_error(e)})")
    extra = sorted(p.name for p in root.iterdir() if p.name not in files and p.name != MANIFEST_FILE)
    problems += [f"{name}: not listed in the manifest" for name in extra]
    if problems:
        raise UnsafeInputError(f"{root} failed its integrity check:\n  " + "\n  ".join(problems))
    return manifest


def compact_json(data: Any) -> str:
    """JSON with one top-level key per line and everything below it on that line (sorted keys: reproducible)."""
    if not isinstance(data, dict):
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
    lines = [
        f" {json.dumps(k)}:{json.dumps(v, sort_keys=True, separators=(',', ':'))}" for k, v in sorted(data.items())
    ]
    return "{\n" + ",\n".join(lines) + "\n}"


def _decode_sparse_entries(
    tensors: dict[str, torch.Tensor],
    sparse_meta: Any,
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
) -> dict[str, torch.Tensor]:
    """Expand the sparse entries; with ``expected`` (name -> shape, dtype of the rebuilt model) each entry
    must match its tensor before anything is allocated."""
    if not isinstance(sparse_meta, dict):
        raise UnsafeInputError("structure.json: malformed sparse entries")
    for name, meta in sparse_meta.items():
        prefix = f"{SPARSE_PREFIX}{name}."
        parts = {k[len(prefix) :]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        if not isinstance(meta, dict):
            raise UnsafeInputError(f"structure.json: malformed sparse entry for {name:.80}")
        if expected is not None and name not in expected:
            raise UnsafeInputError(f"structure.json: sparse entry for {name:.80}, a tensor the model does not have")
        try:
            tensors[name] = decode_sparse(meta, parts, expect=None if expected is None else expected[name])
        except UnsafeInputError as e:
            raise UnsafeInputError(f"{name:.80}: {e}") from None
    leftovers = [k for k in tensors if k.startswith(SPARSE_PREFIX)]
    if leftovers:
        raise UnsafeInputError(f"sparse parts without an entry in structure.json: {', '.join(leftovers[:10])}")
    return tensors


def read_artifact(root: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked ``structure.json`` and the decoded tensors (sparse entries expanded, aliases not yet
    filled) of the artifact folder ``root``, after its manifest checksums.

    Raises:
        UsageError: ``root`` does not exist.
        UnsafeInputError: missing manifest, checksum mismatch, malformed files.
    """
    structure = read_structure(root)
    return structure, read_tensors(root, structure)


def read_structure(root: Path) -> dict[str, Any]:
    """The checked ``structure.json`` of the artifact folder ``root``, after its manifest checksums.

    Raises:
        UsageError: ``root`` does not exist.
        UnsafeInputError: missing manifest, checksum mismatch, malformed files.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"artifact folder {root} does not exist")
    _check_manifest(root)
    structure = _read_json(root / STRUCTURE_FILE)
    if not isinstance(structure, dict) or not isinstance(structure.get("ops"), list):
        raise UnsafeInputError(f"{root / STRUCTURE_FILE} is malformed")
    aliases = structure.setdefault("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise UnsafeInputError(f"{root / STRUCTURE_FILE}: malformed aliases")
    structure.setdefault("sparse", {})
    return structure


def read_tensors(
    root: Path, structure: dict[str, Any], expected: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None
) -> dict[str, torch.Tensor]:
    """The decoded tensors of ``root`` (sparse entries expanded, checked against ``expected`` shapes)."""
    return _decode_sparse_entries(_read_tensors(Path(root) / MODEL_FILE), structure["sparse"], expected)


def fill_exact(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    aliases: dict[str, str],
    where: str,
    *,
    strict_nonfinite: bool = True,
) -> nn.Module:
    """Load ``tensors`` (plus ``alias -> stored name`` entries) into ``model`` strictly, in place.

    Raises:
        UnsafeInputError: missing, extra, mis-shaped or mis-typed tensors, or NaN/Inf (every problem listed).
    """
    tensors = dict(tensors)
    expected = model.state_dict()
    problems = []
    for name, stored in aliases.items():
        if stored not in tensors:
            problems.append(f"{name}: alias of missing tensor {stored}")
        else:
            tensors[name] = tensors[stored]
    for name, ref in expected.items():
        if name not in tensors:
            problems.append(f"{name}: missing")
        elif tensors[name].shape != ref.shape or tensors[name].dtype != ref.dtype:
            problems.append(
                f"{name}: expected {tuple(ref.shape)} {ref.dtype}, found {tuple(tensors[name].shape)} {tensors[name].dtype}"
            )
        elif strict_nonfinite and tensors[name].is_floating_point() and not bool(torch.isfinite(tensors[name]).all()):
            problems.append(f"{name}: NaN or Inf values")
    problems += [f"{name}: unexpected tensor" for name in tensors if name not in expected]
    if problems:
        raise UnsafeInputError(f"{where} does not match the rebuilt model:\n  " + "\n  ".join(problems))
    model.load_state_dict(tensors, strict=True)
    return model


def _replay(model: nn.Module, ops: list[Any], where: Path) -> nn.Module:
    """``replay_ops``, with a crafted op's failure (wrong types or sizes in its data) as UnsafeInputError."""
    try:
        return replay_ops(model, ops)
    except TorchslimError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, OverflowError) as e:
        raise UnsafeInputError(
            f"{where}: a structure op cannot be replayed ({type(e).__name__}: {str(e)[:200]})"
        ) from None


def load(
    path: str | Path,
    factory: Callable[[], nn.Module] | None = None,
    *,
    strict_nonfinite: bool = True,
    trust_factory: bool = False,
) -> nn.Module:
    """Rebuild the exact model saved in ``path`` (eval mode).

    Args:
        path: an artifact folder written by :func:`save`.
        factory: builds the uncompressed architecture (e.g. ``build_teacher``); None: rebuild it from the
            source the artifact records (its ``pkg.mod:factory``, imported with the current directory
            importable, or its stored transformers config; no weights are downloaded).
        strict_nonfinite: reject NaN/Inf in floating-point tensors.
        trust_factory: with no ``factory``, allow importing and calling the ``pkg.mod:factory`` the
            artifact records (code named by the file; only for artifacts you trust). A recorded
            transformers config needs no trust.

    Raises:
        UsageError: ``path`` does not exist, or no ``factory`` and the artifact records no source.
        UnsafeInputError: missing manifest, checksum mismatch, malformed files, NaN/Inf, missing,
            extra or mismatched tensors (every problem listed).
        UnsupportedModelError: a recorded transformers architecture this installation cannot build.
    """
    root = Path(path)
    structure = read_structure(root)
    with outside_inference_mode():  # ordinary tensors, as compress_ makes (see torchslim.core.inference)
        base = (
            factory()
            if factory is not None
            else rebuild_model(structure.get("rebuild"), root, _read_json, trust_factory=trust_factory)
        )
        model = _replay(ordinary_tensors_(base), structure["ops"], root / STRUCTURE_FILE)
        expected = {k: (tuple(t.shape), t.dtype) for k, t in model.state_dict().items()}
        tensors = read_tensors(root, structure, expected)
        fill_exact(model, tensors, structure["aliases"], str(root), strict_nonfinite=strict_nonfinite)
    return model.eval()
