"""The seeded random LLaMA-shaped Hugging Face folders of ``torchslim bench llama-sequential``.

:func:`llama_folder` writes a transformers ``LlamaForCausalLM`` folder (``config.json``, bf16 safetensors
shards, ``model.safetensors.index.json``) once under the torchslim cache (``$TORCHSLIM_CACHE`` or
``~/.cache/torchslim``, ``llama-sequential/``) and returns it on later calls. The weights are written one
shard at a time (the embeddings, each decoder block, the final norm with the head), each tensor drawn
from its own seeded generator, so writing a 3 B model holds one block in memory, never the model. The
folder is built beside its final name and renamed into place when complete: a folder under the final
name is a whole one. No tokenizer is written: the benchmark feeds token ids.

Shapes (each a :class:`~torchslim.workloads.llama.LlamaSpec`): :data:`FULL` is OpenLLaMA-3B's with the MLP rounded up to a multiple of 128 (8640 -> 8704, so
every Linear splits into int4 groups of 128; a width that does not is left unquantized): hidden 3200,
MLP 8704, 26 blocks, 32 heads, vocab 32000, 3.44 B parameters, 6.9 GB in bf16; :data:`SMALL` (hidden 2048, MLP 5632, 8 blocks: 542 M) is small
enough for the in-memory path too; :data:`QUICK_FULL` and :data:`QUICK_SMALL` are tiny stand-ins.

Example:
    >>> FULL.params() > 3_000_000_000, SMALL.params() // 1_000_000
    (True, 542)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from torchslim.workloads.llama import LlamaSpec

__all__ = ["FULL", "QUICK_FULL", "QUICK_SMALL", "SMALL", "llama_folder"]

INIT_STD = 0.02  # transformers' LLaMA initializer_range: the weights a freshly built model would have


FULL = LlamaSpec(hidden=3200, intermediate=8704, layers=26, heads=32, kv_heads=32, vocab=32000)
SMALL = LlamaSpec(hidden=2048, intermediate=5632, layers=8, heads=16, kv_heads=16, vocab=32000)
QUICK_FULL = LlamaSpec(hidden=256, intermediate=512, layers=4, heads=4, kv_heads=2, vocab=512, max_positions=128)
QUICK_SMALL = LlamaSpec(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, vocab=256, max_positions=128)


def _shards(names: list[str], layers: int) -> list[list[str]]:
    """Tensor names grouped by shard: what precedes the blocks, each block, then what follows them."""
    groups: list[list[str]] = [[] for _ in range(layers + 2)]
    for name in names:
        parts = name.split(".")
        if "layers" in parts:
            groups[1 + int(parts[parts.index("layers") + 1])].append(name)
        elif "embed_tokens" in name:
            groups[0].append(name)
        else:
            groups[-1].append(name)
    return [g for g in groups if g]


def _tensor(name: str, shape: torch.Size, seed: int, index: int) -> torch.Tensor:
    """Tensor ``index`` of the model: norms are ones, the rest normal(0, INIT_STD) from its own seed."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return (torch.randn(shape, generator=g) * INIT_STD).to(torch.bfloat16)


def _write(shape: LlamaSpec, folder: Path, seed: int) -> None:
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    config = shape.config(dtype="bfloat16", architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        meta = LlamaForCausalLM(config)
    shapes = {k: v.shape for k, v in meta.state_dict().items()}
    order = {name: i for i, name in enumerate(shapes)}
    groups = _shards(list(shapes), shape.layers)
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: _tensor(n, shapes[n], seed, order[n]) for n in names}
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(names, file))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    config.save_pretrained(folder)
    (folder / "bench-shape.json").write_text(json.dumps({**asdict(shape), "seed": seed}) + "\n", encoding="utf-8")


def llama_folder(shape: LlamaSpec, seed: int = 0, root: Path | None = None) -> Path:
    """The seeded bf16 Hugging Face folder of ``shape`` under ``root`` (default: the torchslim cache),
    written on the first call (one shard in memory at a time) and reused afterwards."""
    if root is None:
        from torchslim.workloads.base import cache_dir

        root = cache_dir() / "llama-sequential"
    folder = root / f"{shape.label()}-seed{seed}"
    if (folder / "bench-shape.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{folder.name}.part-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write(shape, tmp, seed)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "bench-shape.json").is_file():  # not another run's complete folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
