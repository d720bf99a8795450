"""``torchslim bench llama-decode``: batch-1 greedy decode of a weight-bound LLaMA shape, ours and the peers'.

The model is the ``llama-decode`` workload's seeded random ``LlamaForCausalLM`` (default ``full``:
hidden 2048, 8 layers, vocab 32 k, 542 M parameters; ``--data quick`` picks the 116 M shape). One timed
call prefills an 8-token prompt and generates 16 tokens greedily with a KV cache. Rows:

- ``fp32``; ``torchslim-bf16``: ``CastDtype("bfloat16")`` (the issue's ``bf16`` row; the harness names ours ``torchslim-``);
- ``torchslim-int8-weight-only``: ``Int8WeightOnly()`` (per-channel int8 Linear weights, fp32 activations);
- ``torchslim-int4-g128``: ``CastDtype("bfloat16")`` then ``Int4WeightOnly(group_size=128, method="rtn")``:
  every Linear (the LM head too) on torch's int4 CPU kernel; the embedding table stays bf16;
- ``peer-torchao-int4-prototype``: the model in bf16, then torchao
  ``quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=128))`` (torchao's stable
  ``Int4WeightOnlyConfig`` has no CPU path);
- ``peer-torch.ao-int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` on the Linears (deprecated).

Each row reports ``tokens_per_s``, the ``speedup`` over fp32 (same process, variants interleaved), its
size, ``read_mb`` (bytes one decode step reads: everything but the embedding table, see
:func:`~torchslim.workloads.llama.decode_bytes`), ``bound_ms`` = read bytes / measured copy bandwidth
(the memory-bandwidth floor per token) and ``x_bound`` = measured ms per token / ``bound_ms``.

Variants are built with one thread and timed with torch's current thread count. A peer that cannot be
built here is left out with a note, never faked.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import BenchResult, Variant, recipe_config, run_benchmark
from torchslim.errors import UsageError
from torchslim.measure import artifact_bytes
from torchslim.quantization import CastDtype
from torchslim.workloads.llama import LlamaDecodeWorkload

WORKLOAD = "llama-decode"
# Rows built by a built-in recipe: variant -> recipe name (reproduce: `torchslim compress --recipe NAME`);
# torchslim-int4-g128 is not the int4-g128 recipe (GPTQ): here bf16 then RTN, on seeded random weights.
RECIPES = {"torchslim-bf16": "bf16", "torchslim-int8-weight-only": "int8-weight-only"}

__all__ = ["bench", "run_on"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _torch_save_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _torchao_int4(bf16: nn.Module) -> tuple[nn.Module, int]:
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    m = copy.deepcopy(bf16)
    quantize_(m, PrototypeInt4WeightOnlyConfig(group_size=128))
    return m, _torch_save_bytes(m)


def _torch_ao_dynamic(fp32: nn.Module) -> tuple[nn.Module, int]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warning
        m = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)
    return m, _torch_save_bytes(m)


def _ours_int4(fp32: nn.Module) -> tuple[nn.Module, int] | None:
    try:
        from torchslim.quantization import Int4WeightOnly
    except ImportError:
        return None
    m = compress_(copy.deepcopy(fp32), CastDtype("bfloat16"))
    m = compress_(m, Int4WeightOnly(group_size=128, method="rtn", progress=False))
    return m, artifact_bytes(m)


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the decode benchmark; ``data`` names the model size (``"full"``, default, or ``"quick"``).

    ``quick`` times fewer rounds (the model is the same).
    """
    size = data or "full"
    if size not in ("full", "quick"):
        raise UsageError(f"llama-decode: --data names the model size, 'full' or 'quick', got {size!r}")
    return run_on(LlamaDecodeWorkload(size), quick=quick)


def run_on(wl: LlamaDecodeWorkload, quick: bool = False) -> BenchResult:
    """The benchmark on a given :class:`~torchslim.workloads.llama.LlamaDecodeWorkload` (tests pass a tiny one)."""
    from torchslim.workloads.llama import copy_bandwidth, decode_bytes

    x = wl.example_inputs()
    notes: list[str] = []
    built: list[tuple[str, nn.Module, int, float]] = []  # name, model, size, build seconds

    def add(name: str, make: Callable[[], tuple[nn.Module, int] | None]) -> None:
        start = time.perf_counter()
        try:
            with _threads(1):
                out = make()
        except Exception as e:  # noqa: BLE001 - a peer that fails to build is reported, not fatal
            if not name.startswith("peer-"):
                raise
            log.warning("peer %s unavailable: %s", name, e)
            notes.append(f"{name} left out: {type(e).__name__}: {str(e)[:200]}")
            return
        if out is None:
            notes.append(f"{name} left out: the int4 core (torchslim.quantization.Int4WeightOnly) is not importable")
            return
        built.append((name, out[0].eval(), out[1], time.perf_counter() - start))

    with _threads(1):
        fp32 = wl.model()
    add("fp32", lambda: (fp32, artifact_bytes(fp32)))
    bf16 = compress_(copy.deepcopy(fp32), recipe_config(RECIPES["torchslim-bf16"]))
    add("torchslim-bf16", lambda: (bf16, artifact_bytes(bf16)))
    add("torchslim-int8-weight-only", lambda: _int8_wo(fp32))
    add("torchslim-int4-g128", lambda: _ours_int4(fp32))
    add("peer-torchao-int4-prototype", lambda: _torchao_int4(bf16))
    add("peer-torch.ao-int8-dynamic", lambda: _torch_ao_dynamic(fp32))

    bandwidths = [copy_bandwidth()]
    variants = [
        Variant(name, wl.decoder(model), x, size_bytes=size_b, extra={"build_s": round(seconds, 1)})
        for name, model, size_b, seconds in built
    ]
    result = run_benchmark("llama-decode", variants, rounds=3 if quick else 8, warmup=1)
    bandwidths.append(copy_bandwidth())
    bw = max(bandwidths)  # the least disturbed of the two measurements (the machine may be shared)
    for row, (_, model, size_b, _) in zip(result.rows, built, strict=True):
        ms_per_token = row["latency_ms"] / wl.new_tokens
        read = decode_bytes(size_b, model)
        bound_ms = read / bw * 1e3
        row["tokens_per_s"] = round(1e3 / ms_per_token, 2)
        row["ms_per_token"] = round(ms_per_token, 2)
        row["read_mb"] = round(read / 1e6, 1)
        row["bound_ms"] = round(bound_ms, 2)
        row["x_bound"] = round(ms_per_token / bound_ms, 2)
    spec = wl.spec
    result.notes.append(
        f"LLaMA shape hidden {spec.hidden}, {spec.layers} layers, MLP {spec.intermediate}, vocab {spec.vocab} "
        f"({spec.params() / 1e6:.0f} M parameters, seeded random weights); one call = {wl.prompt_tokens}-token "
        f"prompt + {wl.new_tokens} greedy tokens at batch 1; {torch.get_num_threads()} threads"
    )
    result.notes.append(
        f"copy bandwidth {bw / 1e9:.1f} GB/s (median of 256 MiB copies, read + write, best of "
        f"{', '.join(f'{b / 1e9:.1f}' for b in bandwidths)}); bound_ms = read_mb / bandwidth"
    )
    result.notes.extend(notes)
    return result


def _int8_wo(fp32: nn.Module) -> tuple[nn.Module, int]:
    m = compress_(copy.deepcopy(fp32), recipe_config(RECIPES["torchslim-int8-weight-only"]))
    return m, artifact_bytes(m)
