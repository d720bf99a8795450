"""``torchslim bench llama-decode``: batch-1 greedy decode of a weight-bound LLaMA shape, ours and the peers'.

The model is the ``llama-decode`` workload's seeded random ``LlamaForCausalLM`` (default ``full``:
hidden 2048, 8 layers, vocab 32 k, 542 M parameters; ``--data quick`` picks the 116 M shape). One timed
call prefills an 8-token prompt and generates 16 tokens greedily with a KV cache. Rows:

- ``fp32``; ``torchslim-bf16``: ``CastDtype("bfloat16")`` (the issue's ``bf16`` row; the harness names ours ``torchslim-``);
- ``torchslim-int8-weight-only``: ``Int8WeightOnly()`` (per-channel int8 Linear weights, fp32 activations);
- ``torchslim-int4-g128``: ``CastDtype("bfloat16")`` then ``Int4WeightOnly(group_size=128, method="rtn")``:
  every Linear (the LM head too) on torch's int4 CPU kernel; the embedding table stays bf16;
- ``torchslim-int4-w4a8-g128``: the same, with ``activations="int8"`` (the ``int4-w4a8-g128`` recipe's
  path on RTN weights): decode on torchslim's W4A8 kernel (int8 activations per token, VNNI dot
  products), prefill on the same kernel (passes of 8 tokens per unpacked weight chunk);
- ``torchslim-int4-w4a8-g128-compiled``: that model under ``torch.compile(model, dynamic=True)``: Inductor
  fuses the eager model's small operations (norms, rotary embedding, residual adds; at batch 1 their
  per-operation overhead is a quarter of a decode step) around the W4A8 custom op, which it calls as is;
- ``peer-torchao-int4-prototype``: the model in bf16, then torchao
  ``quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=128))`` (torchao's stable
  ``Int4WeightOnlyConfig`` has no CPU path); ``peer-torchao-int4-prototype-compiled``: the same under
  ``torch.compile(model, dynamic=True)``, the usage torchao recommends;
- ``peer-torch.ao-int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` on the Linears (deprecated);
- ``peer-llama.cpp-q4_0``, ``peer-llama.cpp-q4_k_m``: the same seeded weights written to a GGUF file,
  quantized by llama.cpp and decoded through llama-cpp-python on the same thread count
  (:mod:`torchslim.bench.llama_cpp`; left out with a note without the ``torchslim[llamacpp]`` extra).

Each row reports ``tokens_per_s``, the ``speedup`` over fp32 (same process, variants interleaved), its
size, ``read_mb`` (bytes one decode step reads: everything but the embedding table, see
:func:`~torchslim.workloads.llama.decode_bytes`), ``bound_ms`` = read bytes / measured copy bandwidth
(the memory-bandwidth floor per token) and ``x_bound`` = measured ms per token / ``bound_ms``;
``prefill_tokens_per_s`` is one forward over a 512-token prompt (shorter when the model's context is),
best of a few calls after the decode timing.

Variants are built with one thread and timed with torch's current thread count; the compiled rows are
compiled in their build (one decode call on the timing thread count: Inductor's generated loops keep the
thread count they were compiled for) and left out with ``--quick`` (compiling takes minutes). A peer that cannot be
built here is left out with a note, never faked.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.api import compress_
from torchslim.bench.harness import (
    BenchResult,
    BenchTable,
    RowBuilder,
    Variant,
    recipe_config,
    threads,
    torch_save_bytes,
)
from torchslim.bench.peers import torch_ao_dynamic
from torchslim.errors import UsageError
from torchslim.measure import artifact_bytes
from torchslim.quantization import CastDtype
from torchslim.workloads.llama import LlamaDecodeWorkload

# torchslim-int4-g128 is not the int4-g128 recipe (GPTQ): here bf16 then RTN, on seeded random weights.
TABLE = BenchTable(
    name="llama-decode",
    workload="llama-decode",
    rows=(
        "fp32",
        "torchslim-bf16",
        "torchslim-int8-weight-only",
        "torchslim-int4-g128",
        "torchslim-int4-w4a8-g128",
        "torchslim-int4-w4a8-g128-compiled",
        "peer-torchao-int4-prototype",
        "peer-torchao-int4-prototype-compiled",
        "peer-torch.ao-int8-dynamic",
        "peer-llama.cpp-q4_0",
        "peer-llama.cpp-q4_k_m",
    ),
    metrics=(),
    columns=(
        "build_s",
        "tokens_per_s",
        "ms_per_token",
        "read_mb",
        "bound_ms",
        "x_bound",
        "prefill_tokens_per_s",
    ),
    recipes={"torchslim-bf16": "bf16", "torchslim-int8-weight-only": "int8-weight-only"},
    optional=("torchslim-int4-g128", "torchslim-int4-w4a8-g128", "torchslim-int4-w4a8-g128-compiled"),
    rounds=(3, 8),
    warmup=(1, 1),
)

__all__ = ["PREFILL_TOKENS", "TABLE", "bench", "run_on"]

PREFILL_TOKENS = 512


def is_peer_decoder(model: Any) -> bool:
    """Whether a built row is llama.cpp's decoder (it decodes by itself; no torch module to wrap)."""
    return hasattr(model, "prefill_seconds")


def _torchao_int4(bf16: nn.Module) -> tuple[nn.Module, int]:
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    m = copy.deepcopy(bf16)
    quantize_(m, PrototypeInt4WeightOnlyConfig(group_size=128))
    return m, torch_save_bytes(m)


def _ours(fp32: nn.Module, *configs: object) -> tuple[nn.Module, int]:
    m = copy.deepcopy(fp32)
    for config in configs:
        m = compress_(m, config)
    return m, artifact_bytes(m)


def _ours_int4(fp32: nn.Module, activations: str = "bf16") -> tuple[nn.Module, int] | None:
    try:
        from torchslim.quantization import Int4WeightOnly
    except ImportError:
        return None
    config = Int4WeightOnly(group_size=128, method="rtn", activations=activations, progress=False)
    return _ours(fp32, CastDtype("bfloat16"), config)


def _compiled(
    built: tuple[nn.Module, int] | None, wl: LlamaDecodeWorkload, n_threads: int, quick: bool
) -> tuple[nn.Module, int] | None:
    """``torch.compile(model, dynamic=True)`` of a built row, compiled by one decode call on ``n_threads``
    threads (None: no model, or ``quick``)."""
    if built is None or quick:
        return None
    model, size = built
    compiled = torch.compile(model, dynamic=True)
    x = wl.example_inputs()
    with threads(n_threads), torch.inference_mode():
        wl.decoder(compiled)(*x)
    return compiled, size


def _llama_cpp_peer(
    fp32: nn.Module, wl: LlamaDecodeWorkload, folder: Path, ftype: str, context: int, n_threads: int
) -> tuple[Any, int]:
    from torchslim.bench import llama_cpp

    note = llama_cpp.missing()
    if note:
        raise ImportError(note)
    source = folder / "f32.gguf"
    if not source.is_file():  # written once, within the first peer's build time
        llama_cpp.write_gguf(fp32, wl.spec, source)
    out = llama_cpp.quantize_gguf(source, folder / f"{ftype}.gguf", ftype, threads=n_threads)
    decoder = llama_cpp.LlamaCppDecoder(out, wl.new_tokens, threads=n_threads, context=context, extra_buffers=None)
    return decoder, out.stat().st_size


def _prefill_tokens_per_s(model: Any, ids: torch.Tensor, runs: int) -> float:
    """Tokens per second of one forward over ``ids [1, T]`` (best of ``runs`` after one warm-up)."""
    if is_peer_decoder(model):
        return ids.shape[1] / model.prefill_seconds(ids.shape[1], runs=runs + 1)
    best = float("inf")
    with torch.inference_mode():
        for i in range(runs + 1):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            if i:
                best = min(best, time.perf_counter() - start)
    return ids.shape[1] / best


def bench(data: str | None = None, quick: bool = False) -> BenchResult:
    """Run the decode benchmark; ``data`` names the model size (``"full"``, default, or ``"quick"``).

    ``quick`` times fewer rounds (the model is the same).
    """
    size = data or "full"
    if size not in ("full", "quick"):
        raise UsageError(f"llama-decode: --data names the model size, 'full' or 'quick', got {size!r}")
    return run_on(LlamaDecodeWorkload(size), quick=quick)


def run_on(wl: LlamaDecodeWorkload, quick: bool = False, prefill_tokens: int = PREFILL_TOKENS) -> BenchResult:
    """The benchmark on a given :class:`~torchslim.workloads.llama.LlamaDecodeWorkload` (tests pass a tiny one).

    ``prefill_tokens`` is capped at the model's context length.
    """
    with tempfile.TemporaryDirectory(prefix="torchslim-llama-cpp-") as folder:  # the GGUF files of the peers
        return _run(wl, quick, min(prefill_tokens, wl.spec.max_positions), Path(folder))


def _run(wl: LlamaDecodeWorkload, quick: bool, prefill_tokens: int, folder: Path) -> BenchResult:
    from torchslim.bench.llama_cpp import gguf_read_bytes
    from torchslim.kernels import hugepages
    from torchslim.workloads.llama import copy_bandwidth, decode_bytes

    x = wl.example_inputs()
    with threads(1):
        fp32 = wl.model()
    bf16, bf16_size = _ours(fp32, recipe_config(TABLE.recipes["torchslim-bf16"]))
    rows = RowBuilder(threads=1)
    rows.add("fp32", lambda: (fp32, artifact_bytes(fp32)))
    rows.add("torchslim-bf16", lambda: (bf16, bf16_size))
    rows.add(
        "torchslim-int8-weight-only", lambda: _ours(fp32, recipe_config(TABLE.recipes["torchslim-int8-weight-only"]))
    )
    rows.add(
        "torchslim-int4-g128",
        lambda: _ours_int4(fp32),
        missing="the int4 core (torchslim.quantization.Int4WeightOnly) is not importable",
    )
    n_threads = torch.get_num_threads()  # the timing's thread count (rows are built on one)
    # A compiled row wraps the eager row's model (no second copy); its build_s is the compilation alone.
    eager: dict[str, tuple[nn.Module, int] | None] = {}
    compiled_missing = "compiled rows are not built with --quick (compiling takes minutes)"
    rows.add(
        "torchslim-int4-w4a8-g128",
        lambda: eager.setdefault("w4a8", _ours_int4(fp32, "int8")),
        missing="the int4 core (torchslim.quantization.Int4WeightOnly) is not importable",
    )
    rows.add(
        "torchslim-int4-w4a8-g128-compiled",
        lambda: _compiled(eager.get("w4a8"), wl, n_threads, quick),
        missing=compiled_missing,
    )
    rows.add("peer-torchao-int4-prototype", lambda: eager.setdefault("torchao", _torchao_int4(bf16)))
    rows.add(
        "peer-torchao-int4-prototype-compiled",
        lambda: _compiled(eager.get("torchao"), wl, n_threads, quick),
        missing=compiled_missing,
    )
    rows.add("peer-torch.ao-int8-dynamic", lambda: torch_ao_dynamic(fp32))
    context = max(prefill_tokens, wl.prompt_tokens + wl.new_tokens)
    for ftype in ("q4_0", "q4_k_m"):
        rows.add(f"peer-llama.cpp-{ftype}", lambda f=ftype: _llama_cpp_peer(fp32, wl, folder, f, context, n_threads))

    bandwidths = [copy_bandwidth()]
    variants = [
        Variant(name, model if is_peer_decoder(model) else wl.decoder(model), x, size_bytes=size_b)
        for name, model, size_b, _ in rows.built
    ]
    for v, (*_, seconds) in zip(variants, rows.built, strict=True):
        v.extra["build_s"] = round(seconds, 1)
    result = TABLE.run(variants, quick)
    bandwidths.append(copy_bandwidth())
    ids = (torch.arange(prefill_tokens, dtype=torch.long)[None] % (wl.spec.vocab - 3)) + 3
    prefill = {name: _prefill_tokens_per_s(model, ids, runs=1 if quick else 2) for name, model, _, _ in rows.built}
    bw = max(bandwidths)  # the least disturbed of the two measurements (other load lowers a measurement)
    for row, (_, model, size_b, _) in zip(result.rows, rows.built, strict=True):
        ms_per_token = row["latency_ms"] / wl.new_tokens
        read = gguf_read_bytes(model.path) if is_peer_decoder(model) else decode_bytes(size_b, model)
        bound_ms = read / bw * 1e3
        row["tokens_per_s"] = round(1e3 / ms_per_token, 2)
        row["ms_per_token"] = round(ms_per_token, 2)
        row["read_mb"] = round(read / 1e6, 1)
        row["bound_ms"] = round(bound_ms, 2)
        row["x_bound"] = round(ms_per_token / bound_ms, 2)
        row["prefill_tokens_per_s"] = round(prefill[row["variant"]], 1)
    for _, model, _, _ in rows.built:
        if is_peer_decoder(model):
            if model.note:
                result.notes.append(model.note)
            model.close()
    spec = wl.spec
    result.notes.append(
        f"LLaMA shape hidden {spec.hidden}, {spec.layers} layers, MLP {spec.intermediate}, vocab {spec.vocab} "
        f"({spec.params() / 1e6:.0f} M parameters, seeded random weights); one call = {wl.prompt_tokens}-token "
        f"prompt + {wl.new_tokens} greedy tokens at batch 1; {torch.get_num_threads()} threads; "
        f"prefill_tokens_per_s: one forward over {prefill_tokens} tokens"
    )
    huge = hugepages.available()
    result.notes.append(
        f"copy bandwidth {bw / 1e9:.1f} GB/s (median of 256 MiB copies, read + write, the larger of ordinary "
        f"and huge-page buffers{'' if huge else ' (huge pages unavailable here)'}; best of "
        f"{', '.join(f'{b / 1e9:.1f}' for b in bandwidths)}); bound_ms = read_mb / bandwidth; the W4A8 rows' "
        f"weights lie in huge pages{'' if huge else ' where available'}"
    )
    result.notes.extend(rows.notes)
    return result
