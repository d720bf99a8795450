"""Sequential (out-of-core) compression: a Hugging Face causal LM compressed one decoder block at a time.

:func:`compress_sequential` reads a transformers folder of safetensors shards and writes the artifact
``ts.save`` would write for the same recipe run in memory (``compress --model hf:DIR``), holding only
one decoder block, the calibration activations at one block boundary, and (at the start and the end)
the embeddings or the head. The model is built weightless (:mod:`.skeleton`); then:

1. the modules before the blocks (embeddings) are filled from the shards, every calibration batch is
   run up to the first block, where a hook keeps the block's inputs (hidden states and the keyword
   inputs the model passes: attention mask, position embeddings) and stops the forward;
2. for each block: its weights are read, each recipe step is applied to it through the ordinary
   technique (``torchslim.api.compress_`` on a module tree holding only this block under its full
   name, so selections and names are those of the whole model) with the block's inputs as the
   calibration batches, the block is run to give the next block's inputs, its tensors are written to
   a part file and its memory is freed (one progress line per block);
3. the final norm and the output head are done the same way, then the part files are merged into the
   artifact's ``model.safetensors`` one tensor at a time (:mod:`.stream_write`).

Why this equals the in-memory path: there, each step runs over the whole model before the next, and
a calibrated technique calibrates layer ``l`` on the outputs of the layers before it as that step has
left them (GPTQ/AWQ: float stand-ins holding the dequantized int4 weight while the step runs; Wanda and
SparseGPT: masked weights), with every earlier step applied. Here each step keeps its own stream of
block inputs, produced by the earlier blocks in exactly that state: with the step applied (and its
int4 layers as the same float stand-ins) when it calibrates ``sequential``ly, before it otherwise.
The blocks see the same tensors with the same shapes, so every Hessian, mask and code is bit-identical
(tested on a tiny LLaMA for RTN, GPTQ, Wanda, and SparseGPT followed by AWQ). Pruning's ``keep_first_last`` is decided
once over the whole model's selected layers, as in memory.

Supported steps are the block-local ones: ``int4-weight-only`` (every method), ``wanda-pruning``,
``sparsegpt-pruning``, ``nm-pruning``, and ``magnitude-pruning`` per layer or by threshold (its global
ranking would need every layer at once). A step may not select the modules before the blocks.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.api import compress_, config_default_select
from torchslim.calibration.hooks import forward_hooks
from torchslim.core.batches import ModelInputs, call_model
from torchslim.core.context import Context
from torchslim.core.progress import format_duration
from torchslim.core.progress import progress as progress_task
from torchslim.core.select import Select
from torchslim.core.structure import structure_ops
from torchslim.core.walker import replace_module_
from torchslim.errors import OutputExistsError, UnsupportedModelError
from torchslim.io.atomic import describe_os_error
from torchslim.io.config_bound import model_byte_limit
from torchslim.measure.heap import peak_resident_bytes, release_free_heap
from torchslim.pruning import MagnitudePruning, NMPruning, SparseGPTPruning, WandaPruning
from torchslim.quantization import Int4WeightOnly, float_standin
from torchslim.sequential.activations import ActivationStore
from torchslim.sequential.skeleton import Skeleton, find_blocks, open_skeleton

__all__ = ["Layout", "SequentialRun", "check_sequential", "compress_sequential", "model_layout"]

_PRUNING = (WandaPruning, SparseGPTPruning, NMPruning, MagnitudePruning)


@dataclass(frozen=True)
class Layout:
    """Where the parts of a block-structured causal LM are (qualified module names)."""

    blocks: str  # the ModuleList of decoder blocks
    count: int
    norm: str  # the final norm after the blocks
    head: str  # the output projection (lm_head)
    before: tuple[str, ...]  # modules owning parameters that run before the blocks (embeddings)


@dataclass
class SequentialRun:
    """What a sequential run did: per step its events, and the whole run's time and blocks."""

    recipe: Any
    blocks: int
    seconds: float = 0.0
    events: dict[str, list[str]] = field(default_factory=dict)
    activations_on_disk: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.name,
            "sequential": {
                "blocks": self.blocks,
                "seconds": self.seconds,
                "activations_on_disk": self.activations_on_disk,
            },
            "steps": [{"name": k, "events": v} for k, v in self.events.items()],
        }


def _owners(model: nn.Module) -> list[str]:
    """Names of the modules that directly own a parameter or a stored buffer, in module order."""
    out = []
    for name, module in model.named_modules():
        stored = [n for n in module._buffers if n not in module._non_persistent_buffers_set]
        if next(iter(module.parameters(recurse=False)), None) is not None or stored:
            out.append(name)
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def model_layout(model: nn.Module) -> Layout:
    """The :class:`Layout` of a transformers causal LM: blocks, final norm, head and what runs before.

    Raises:
        UnsupportedModelError: no block list, no output head, a head tied to the input embeddings, or
            other parameters after the blocks than one norm and the head.
    """
    blocks, block_list = find_blocks(model)
    get_head = getattr(model, "get_output_embeddings", None)
    head_module = get_head() if callable(get_head) else None
    names = {id(m): n for n, m in model.named_modules()}
    if head_module is None or id(head_module) not in names:
        raise UnsupportedModelError(f"{type(model).__name__} has no output head; --sequential needs a causal LM")
    head = names[id(head_module)]
    get_in = getattr(model, "get_input_embeddings", None)
    embed = get_in() if callable(get_in) else None
    if embed is not None and getattr(embed, "weight", None) is getattr(head_module, "weight", None):
        raise UnsupportedModelError(
            f"{type(model).__name__} ties its output head to the input embeddings; --sequential does not handle tied weights"
        )
    owners = [n for n in _owners(model) if not _within(n, blocks) and not _within(n, head)]
    order = [n for n, _ in model.named_modules()]
    after = [n for n in owners if order.index(n) > order.index(blocks)]
    if len(after) != 1:
        raise UnsupportedModelError(
            f"{type(model).__name__}: expected one norm between the blocks and the head, found {after or 'none'}"
        )
    before = tuple(n for n in owners if n not in after)
    return Layout(blocks, len(block_list), after[0], head, before)


def _steps_checked(model: nn.Module, layout: Layout, recipe: Any) -> list[tuple[Any, Select, set[str] | None]]:
    """``(config, select, names)`` per step; ``names``: pruning's layers after keep_first_last (None: all selected).

    Raises:
        UnsupportedModelError: a step kind that is not block-local, or one selecting a module before the blocks.
    """
    out = []
    for step in recipe.steps:
        config = step.config
        if isinstance(config, MagnitudePruning) and config.threshold is None and config.scope == "global":
            raise UnsupportedModelError(
                "--sequential: magnitude-pruning with scope 'global' ranks every layer at once; use scope: layer"
            )
        if not isinstance(config, (Int4WeightOnly, *_PRUNING)):
            raise UnsupportedModelError(
                f"--sequential: step {step.label!r} ({config.kind}) is not block-local; supported: "
                "int4-weight-only, wanda-pruning, sparsegpt-pruning, nm-pruning, magnitude-pruning (per layer)"
            )
        select = step.select or config_default_select(config) or Select()
        chosen = [n for n, m in select.modules(model) if not isinstance(m, nn.ModuleList)]
        outside = [n for n in chosen if any(_within(n, b) for b in layout.before)]
        if outside:
            raise UnsupportedModelError(
                f"--sequential: step {step.label!r} selects {outside[0]!r}, before the blocks; exclude it with select"
            )
        names = None
        if isinstance(config, _PRUNING):
            names = [n for n, m in select.modules(model) if isinstance(getattr(m, "weight", None), torch.Tensor)]
            if config.keep_first_last and len(names) > 2:
                names = names[1:-1]
            names = set(names)
        out.append((config, select, names))
    return out


class _Stage(nn.Module):
    """A module tree holding some of the model's modules under their full names; forward is ``fn(self, ...)``."""

    def __init__(self, model: nn.Module, prefixes: Sequence[str], fn: Callable[..., Any]) -> None:
        super().__init__()
        for prefix in prefixes:
            parent: nn.Module = self
            parts = prefix.split(".")
            for part in parts[:-1]:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.add_module(parts[-1], model.get_submodule(prefix))
        object.__setattr__(self, "_fn", fn)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(self, *args, **kwargs)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class _Captured(Exception):
    """Raised by the hook on the first block once it holds the block's inputs."""


def _capture(model: nn.Module, block: nn.Module, batches: Sequence[Any], store: ActivationStore) -> list[ModelInputs]:
    """The first block's inputs for each calibration batch (caches dropped: each replay starts afresh)."""
    seen: list[ModelInputs] = []

    def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kept = {k: v for k, v in kwargs.items() if "Cache" not in type(v).__name__}
        if "use_cache" in kept:
            kept["use_cache"] = False
        hidden = args[0] if args else kept.pop("hidden_states")
        seen.append(ModelInputs((store.keep(hidden),) + tuple(args[1:]), kept))
        raise _Captured

    with forward_hooks([(block, hook)], pre=True, with_kwargs=True), torch.no_grad():
        for batch in batches:
            try:
                call_model(model, batch)
            except _Captured:
                pass
    return seen


def _float_standins(stage: nn.Module, before: dict[str, nn.Module]) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, quantized, stand-in)`` for each module of ``stage`` swapped in by the last step and holding a
    dequantized weight: a float Linear computing the same, as the int4 step itself calibrates later layers on."""
    out = []
    for name, new in stage.named_modules():
        old = before.get(name)
        if old is None or old is new:
            continue
        lin = float_standin(new, old)
        if lin is not new:
            out.append((name, new, lin))
    return out


def _calibrates_on_own_output(config: Any) -> bool:
    """In memory, does the step calibrate later layers on the outputs it has already changed?"""
    return bool(getattr(config, "sequential", True))


def _run(stage: nn.Module, inputs: Sequence[ModelInputs], store: ActivationStore) -> list[ModelInputs]:
    """``stage`` applied to each input: the next stage's inputs (same keyword inputs, new hidden states)."""
    out = []
    with torch.no_grad():
        for x in inputs:
            hidden = _first(x.call(stage))
            out.append(ModelInputs((store.keep(hidden),) + x.args[1:], x.kwargs))
    return out


class _Runner:
    """One sequential run's state: the skeleton, the steps, one activation stream per step, the parts written."""

    def __init__(self, sk: Skeleton, recipe: Any, ctx: Context, store: ActivationStore, parts_dir: Path) -> None:
        self.sk, self.recipe, self.ctx, self.store, self.parts_dir = sk, recipe, ctx, store, parts_dir
        self.layout = model_layout(sk.model)
        self.steps = _steps_checked(sk.model, self.layout, recipe)
        self.run = SequentialRun(recipe, self.layout.count, events={s.label: [] for s in recipe.steps})
        self.ops: list[list[dict[str, Any]]] = [[] for _ in recipe.steps]
        self.parts: list[Path] = []
        self.aliases: dict[str, str] = {}
        self.sparse: dict[str, Any] = {}

    def _write(self, stage: nn.Module) -> None:
        from safetensors.torch import save_file

        from torchslim.io import encode_state

        tensors, aliases, sparse = encode_state(stage)
        path = self.parts_dir / f"part-{len(self.parts):05d}.safetensors"
        save_file(tensors, str(path))
        self.parts.append(path)
        self.aliases.update(aliases)
        self.sparse.update(sparse)

    def _apply(self, stage: nn.Module, streams: list[list[ModelInputs] | None], tail: bool) -> None:
        """Every step on ``stage``, each calibrated on its own stream, which it then carries past the stage."""
        for k, (config, select, names) in enumerate(self.steps):
            label = self.recipe.steps[k].label
            inputs = streams[k]
            if names is not None:  # pruning: only this stage's share of the layers chosen over the whole model
                mine = sorted(n for n, _ in stage.named_modules() if n in names)
                config = (
                    dataclasses.replace(config, keep_first_last=False) if hasattr(config, "keep_first_last") else config
                )
                select = Select(include=tuple(f"^{re.escape(n)}$" for n in mine)) if mine else None
            own = _calibrates_on_own_output(config)
            carry = inputs is not None and not tail  # nothing runs after the head
            if carry and not own:
                streams[k] = _run(stage, inputs, self.store)
            if select is not None:
                before = dict(stage.named_modules())
                n_events, n_ops = len(self.ctx.events), len(structure_ops(stage))
                calibration = list(inputs) if inputs is not None else None
                ctx = dataclasses.replace(self.ctx, calibration=calibration, input_fn=None)
                torch.manual_seed(self.recipe.seed + self.ctx.seed + k)
                compress_(stage, config, select=select, ctx=ctx)
                self.run.events[label] += self.ctx.events[n_events:]
                self.ops[k] += structure_ops(stage)[n_ops:]
            else:
                before = {}
            if carry and own:
                standins = _float_standins(stage, before) if isinstance(config, Int4WeightOnly) else []
                for name, _, lin in standins:
                    replace_module_(stage, name, lin)
                streams[k] = _run(stage, inputs, self.store)
                for name, new, _ in standins:
                    replace_module_(stage, name, new)
            for x in inputs or ():
                self.store.forget(x.args[0])

    def go(self) -> None:
        sk, layout, ctx = self.sk, self.layout, self.ctx
        model = sk.model
        for prefix in layout.before:
            sk.materialise(prefix)
        blocks = model.get_submodule(layout.blocks)
        streams: list[list[ModelInputs] | None] = [None] * len(self.steps)
        if ctx.calibration:
            first = _capture(model, blocks[0], ctx.calibration, self.store)
            streams = [list(first) for _ in self.steps]
        self._write(_Stage(model, layout.before, lambda s, *a, **k: None))
        for prefix in layout.before:
            sk.release(prefix)
        n = layout.count
        with progress_task(n + 1, f"sequential {self.recipe.name}", unit="blocks") as bar:
            for i in range(n):
                start = time.perf_counter()
                prefix = f"{layout.blocks}.{i}"
                sk.materialise(prefix)
                stage = _Stage(model, [prefix], lambda s, *a, p=prefix, **k: s.get_submodule(p)(*a, **k))
                self._apply(stage, streams, tail=False)
                self._write(stage)
                sk.release(prefix)
                del stage
                release_free_heap()  # the block's freed temporaries, so the next block starts from the same memory
                bar.note(
                    f"sequential {self.recipe.name}: block {i + 1}/{n} done in "
                    f"{format_duration(time.perf_counter() - start)}, peak memory {peak_resident_bytes() / 1e9:.2f} GB"
                )
                bar.advance()
            sk.materialise(layout.norm)
            sk.materialise(layout.head)
            tail = _Stage(
                model,
                [layout.norm, layout.head],
                lambda s, h, *_, **__: s.get_submodule(layout.head)(s.get_submodule(layout.norm)(h)),
            )
            self._apply(tail, streams, tail=True)
            self._write(tail)
            sk.release(layout.norm)
            sk.release(layout.head)
            bar.note(f"sequential {self.recipe.name}: head done, peak memory {peak_resident_bytes() / 1e9:.2f} GB")
            bar.advance()
        self.run.activations_on_disk = self.store.on_disk

    def merged_ops(self) -> list[dict[str, Any]]:
        """The structure log the in-memory run records: per step, its stages' module-swap ops as one."""
        out: list[dict[str, Any]] = []
        for ops in self.ops:
            merged: list[dict[str, Any]] = []
            for op in ops:
                last = merged[-1] if merged else None
                if last and last["op"] == op["op"] and set(last["data"]) == set(op["data"]) == {"modules"}:
                    last["data"]["modules"] += op["data"]["modules"]
                else:
                    merged.append({"op": op["op"], "data": dict(op["data"])})
            out += merged
        return out


def check_sequential(model: nn.Module, recipe: Any) -> Layout:
    """The :class:`Layout` of ``model`` (a skeleton will do) when ``recipe`` can run on it block by block.

    Raises:
        UnsupportedModelError: the architecture or a step is not supported (the message says why).
    """
    layout = model_layout(model)
    _steps_checked(model, layout, recipe)
    return layout


def compress_sequential(
    path: str | Path,
    recipe: Any,
    out: str | Path,
    *,
    ctx: Context | None = None,
    force: bool = False,
    source: str | None = None,
    activation_limit_bytes: int | None = None,
) -> SequentialRun:
    """Compress the transformers folder ``path`` with ``recipe`` block by block and write the artifact ``out``.

    Args:
        path: a local transformers folder with safetensors weights (one file or an index of shards).
        recipe: a :class:`torchslim.recipes.Recipe` of block-local steps (module docstring).
        out: the artifact folder (absent or empty unless ``force``).
        ctx: calibration batches (keyword inputs of the whole model, e.g. a tokenizer's output) and seed.
        force: replace an existing artifact once the new one is complete.
        source: recorded in the manifest, as ``ts.save`` does (``"hf:DIR"``).
        activation_limit_bytes: calibration activations beyond this many bytes go to memory-mapped
            files (default: half the memory available when the run starts).

    Returns:
        The run's events per step, block count and duration. The artifact holds the tensors, structure
        log and config the in-memory path writes; its ``report.json`` holds this run's record instead
        of before/after measurements (measuring would load the whole model).

    Raises:
        UnsupportedModelError: not a block-structured causal LM, or a step that is not block-local.
        ConfigError: a calibrated step without calibration data, as in memory.
    """
    from torchslim.io import check_output_dir

    check_output_dir(Path(out), force)
    ctx = ctx if ctx is not None else Context()
    sk = open_skeleton(path)
    start = time.perf_counter()
    parent = Path(out).resolve().parent  # the parts go beside the artifact, on the disk meant to hold it
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputExistsError(f"cannot write under {parent}: {describe_os_error(e)}") from None
    if activation_limit_bytes is None:
        activation_limit_bytes = model_byte_limit() // 2
    store = ActivationStore(activation_limit_bytes)
    try:
        with tempfile.TemporaryDirectory(prefix="torchslim-sequential-", dir=parent) as tmp:
            runner = _Runner(sk, recipe, ctx, store, Path(tmp))
            runner.go()
            runner.run.seconds = time.perf_counter() - start
            _write_artifact(runner, out, force=force, source=source)
    finally:
        store.close()
        sk.close()
    return runner.run


def _write_artifact(runner: _Runner, out: str | Path, *, force: bool, source: str | None) -> None:
    """The artifact folder, with the files ``ts.save`` writes (tensors merged from the parts, streamed)."""
    import json

    from safetensors import safe_open

    from torchslim.io import atomic_dir
    from torchslim.io.artifact import FORMAT_VERSION, MODEL_FILE, STRUCTURE_FILE, compact_json
    from torchslim.io.source import rebuild_record
    from torchslim.sequential.stream_write import write_merged
    from torchslim.version import __version__

    rebuild, extra_files = rebuild_record(runner.sk.model, source)
    structure: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "ops": runner.merged_ops(),
        "aliases": runner.aliases,
        "sparse": runner.sparse,
    }
    if rebuild is not None:
        structure["rebuild"] = rebuild
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "torchslim": __version__,
        "torch": torch.__version__.split("+")[0],
        "seed": runner.recipe.seed + runner.ctx.seed,
    }
    if source is not None:
        manifest["source"] = source
    with atomic_dir(out, force=force, manifest=manifest) as tmp:
        write_merged(runner.parts, tmp / MODEL_FILE)
        (tmp / STRUCTURE_FILE).write_text(compact_json(structure) + "\n", encoding="utf-8")
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "recipe.yaml").write_text(runner.recipe.to_yaml(), encoding="utf-8")
        report = runner.run.to_dict()
        (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        for part in runner.parts:  # verify, one tensor at a time, one part's pages mapped at a time
            with safe_open(str(tmp / MODEL_FILE), framework="pt") as written, safe_open(str(part), framework="pt") as p:
                for name in p.keys():  # noqa: SIM118
                    if not torch.equal(written.get_tensor(name), p.get_tensor(name)):
                        from torchslim.errors import UnsafeInputError

                        raise UnsafeInputError(f"verification of {out} failed: {name} differs")
