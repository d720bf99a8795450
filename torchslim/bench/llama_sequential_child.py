"""The child processes of ``torchslim bench llama-sequential``: each run measures its own peak memory.

:func:`run_child` starts ``python -c ...`` on one task and returns the JSON the child prints last; in the
child, :func:`child_main` runs the task and reports its peak resident set (``VmHWM`` of
``/proc/self/status``; ``ru_maxrss`` where there is no ``/proc``) and the task's own wall time. Tasks:

- ``sequential``: :func:`torchslim.sequential.compress_sequential` of the folder with the recipe, on the
  calibration batches :func:`calibration` gives;
- ``in-memory``: the folder loaded whole (:func:`torchslim.io.load_hf_model`), the same recipe run on
  the same batches, saved with :func:`torchslim.io.save` (the artifact ``compress --model hf:DIR`` writes);
- ``decode``: an artifact (or, with ``fp32``, the source folder in float32) loaded and timed on batch-1
  greedy decoding: ``runs`` calls of a ``prompt``-token prompt plus ``new_tokens`` generated tokens, after
  one warm-up call; the median call is reported.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from torchslim.measure.heap import peak_resident_bytes

__all__ = ["artifact_factory", "calibration", "child_main", "peak_rss_mb", "run_child"]

_MARK = "LLAMA-SEQUENTIAL-RESULT "


def peak_rss_mb() -> float:
    """This process's peak resident set in MB (10^6 bytes)."""
    return peak_resident_bytes() / 1e6


def calibration(vocab: int, batches: int, tokens: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``batches`` seeded random token-id batches of shape ``[1, tokens]`` with their attention masks.

    Example:
        >>> [b["input_ids"].shape for b in calibration(100, 2, 8)]
        [torch.Size([1, 8]), torch.Size([1, 8])]
    """
    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(3, vocab, (1, tokens), generator=g), "attention_mask": torch.ones(1, tokens).long()}
        for _ in range(batches)
    ]


def artifact_factory(artifact: Path):  # noqa: ANN201 - returns a zero-argument builder
    """A builder of the artifact's uncompressed LLaMA in its config's dtype with uninitialised weights.

    ``torchslim.load`` then replays the compression and fills every tensor. The default rebuild
    initialises the model in float32 first, which for a 3 B model needs 13.7 GB before any int4 layer
    replaces its Linear; built on the meta device and allocated empty in bf16, it needs half that.
    """

    def build() -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(artifact)
        dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        model = model.to(dtype).to_empty(device="cpu")
        rotary = model.model.rotary_emb  # its inv_freq is a computed (non-persistent) buffer: rebuild it,
        model.model.rotary_emb = type(rotary)(config=cfg).to(dtype)  # cast as the default rebuild casts it
        return model

    return build


def _decode(task: dict[str, Any]) -> dict[str, Any]:
    from torchslim.measure import count_params

    if task.get("fp32"):
        from torchslim.io import load_hf_model

        model = load_hf_model(task["path"]).float().eval()
    else:
        from torchslim.io import load

        model = load(task["path"], factory=artifact_factory(Path(task["path"])))
    ids = (torch.arange(task["prompt"], dtype=torch.long)[None] % (model.config.vocab_size - 3)) + 3
    n = task["new_tokens"]
    seconds = []
    with torch.inference_mode():
        for i in range(task["runs"] + 1):
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            if i:  # the first call warms up
                seconds.append(time.perf_counter() - start)
    assert out.shape[1] == ids.shape[1] + n
    median = statistics.median(seconds)
    return {"latency_ms": median * 1e3, "tokens_per_s": n / median, "params": count_params(model)}


def _compress(task: dict[str, Any]) -> dict[str, Any]:
    from torchslim.core.context import Context
    from torchslim.recipes import load_recipe

    recipe = load_recipe(task["recipe"])
    batches = calibration(task["vocab"], task["batches"], task["tokens"])
    source = f"hf:{task['path']}"
    start = time.perf_counter()
    if task["task"] == "sequential":
        from torchslim.sequential import compress_sequential

        compress_sequential(task["path"], recipe, task["out"], ctx=Context(calibration=batches), source=source)
    else:
        from torchslim.io import load_hf_model, save
        from torchslim.recipes import run_recipe

        model, _ = run_recipe(load_hf_model(task["path"]), recipe, Context(calibration=batches), measure_steps=False)
        save(model, task["out"], recipe=recipe, report={}, seed=recipe.seed, source=source)
    return {"build_s": time.perf_counter() - start}


def child_main() -> None:
    """Run the task given as JSON in ``sys.argv[1]``; print its result with the peak memory as JSON."""
    task = json.loads(sys.argv[1])
    torch.manual_seed(0)
    out = _decode(task) if task["task"] == "decode" else _compress(task)
    print(_MARK + json.dumps({**out, "peak_rss_mb": peak_rss_mb()}), flush=True)


def run_child(task: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``task`` in a fresh Python process and return its result; its progress lines (one per block of a
    sequential run) are passed on to this process's stderr as they come. RuntimeError (with the end of its
    stderr) when it fails or runs past ``timeout`` seconds."""
    code = "from torchslim.bench.llama_sequential_child import child_main; child_main()"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCHSLIM_PROGRESS": "plain"}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(task)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout or ()), daemon=True)
        reader.start()
        for line in proc.stderr or ():
            tail.append(line)
            sys.stderr.write(line)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"{task['task']} child ran past {timeout} s") from None
        reader.join()
    line = next((ln for ln in reversed(out) if ln.startswith(_MARK)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{task['task']} child exited {proc.returncode}: {''.join(tail).strip()[-1500:]}")
    return json.loads(line[len(_MARK) :])
