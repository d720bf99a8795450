"""``torchslim compress --sequential``: the command-line side of block-by-block compression.

:func:`wants_sequential` decides (``--sequential``, or a ``--model hf:DIR`` that would not fit in memory:
:mod:`.auto`), :func:`compress_command` runs it with the data the in-memory path has (the folder's
example inputs; no calibration batches, so calibrated recipes stop with the same ConfigError) and
prints one line for the artifact.
"""

from __future__ import annotations

import argparse
import sys

from torchslim.core.context import Context
from torchslim.core.progress import format_duration
from torchslim.errors import ConfigError, UsageError
from torchslim.io.jsonfile import write_json
from torchslim.io.source import HF_PREFIX

__all__ = ["SEQUENTIAL_HELP", "compress_command", "wants_sequential"]

SEQUENTIAL_HELP = (
    "with --model hf:DIR: compress one decoder block at a time, reading the weights from the safetensors "
    "shards (memory: one block + calibration activations); automatic when the model would not fit"
)


def _folder(args: argparse.Namespace) -> str | None:
    spec = str(getattr(args, "model", None) or "")
    return spec[len(HF_PREFIX) :] if spec.startswith(HF_PREFIX) else None


def wants_sequential(args: argparse.Namespace) -> bool:
    """True for ``--sequential``, or for an ``hf:DIR`` model over the memory bound that can go block by block.

    Raises:
        UsageError: ``--sequential`` without ``--model hf:DIR``, or with a device other than the CPU.
    """
    from torchslim.recipes import load_recipe
    from torchslim.sequential.auto import sequential_reason

    folder = _folder(args)
    if args.sequential:
        if folder is None:
            raise UsageError("--sequential needs --model hf:DIR, a Hugging Face folder with safetensors weights")
        if getattr(args, "device", "cpu") != "cpu":
            raise UsageError("--sequential runs on the CPU; leave out --device")
        return True
    if folder is None or getattr(args, "device", "cpu") != "cpu":
        return False
    reason = sequential_reason(folder, load_recipe(args.recipe))
    if reason is not None:
        print(f"torchslim: {reason}", file=sys.stderr)
    return reason is not None


def compress_command(args: argparse.Namespace) -> int:
    """Run the recipe block by block on ``--model hf:DIR`` and write the artifact ``--out``."""
    from torchslim.io.hf import hf_example_inputs
    from torchslim.recipes import load_recipe
    from torchslim.sequential.runner import compress_sequential

    folder = _folder(args)
    assert folder is not None  # wants_sequential checked it
    recipe = load_recipe(args.recipe)
    ctx = Context(example_inputs=hf_example_inputs(folder))
    try:
        run = compress_sequential(folder, recipe, args.out, ctx=ctx, force=args.force, source=args.model)
    except ConfigError as e:
        if "data" in str(e):  # calibration data: --model has none to give
            raise ConfigError(f"{e}; --model brings no data: calibrated recipes need calibration batches") from None
        raise
    print(f"wrote {args.out} ({run.blocks} blocks, block by block, {format_duration(run.seconds)})")
    write_json(args.json, run.to_dict())
    return 0
