"""The llama.cpp peer of ``llama-decode``: the same seeded weights as a GGUF file, quantized and run by llama.cpp.

:func:`write_gguf` writes a transformers ``LlamaForCausalLM`` to a GGUF file (float32 tensors) with the
``gguf`` package: llama.cpp's LLaMA tensor names (``token_embd``, ``blk.N.attn_q`` …, ``output``) and
metadata, and a synthetic SentencePiece-style vocabulary (control tokens, the 256 byte tokens llama.cpp
looks up when it loads a vocabulary, then placeholder pieces) since the model has no tokenizer. The
query and key projections are permuted from transformers' rotate-half RoPE layout to llama.cpp's
interleaved one, as llama.cpp's own converter does, so both compute the same function.
:func:`quantize_gguf` runs llama.cpp's ``llama_model_quantize`` (through ``llama-cpp-python``) to
``q4_0`` or ``q4_k_m`` with llama.cpp's default choices for that type (e.g. a 6-bit output head).
:class:`LlamaCppDecoder` decodes greedily at batch 1 (prefill the prompt, then one token at a time,
``argmax`` of the logits), the same work as :class:`~torchslim.workloads.llama.GreedyDecoder`.

llama.cpp's extra buffer types (its weight repacking for the CPU's vector kernels, and the AMX path
on CPUs with AMX) crash some machines in the first forward (llama.cpp issue #20824, a segfault in
``ggml_backend_amx_mul_mat`` on Sapphire Rapids hosts). A segfault cannot be caught in-process, so
:func:`extra_buffers_work` decodes a few tokens in a child process first; where it crashes, the decoder
loads the model without extra buffer types (llama.cpp's plain quantized kernels) and says so in ``note``.

The peer needs the optional extra ``torchslim[llamacpp]`` (``llama-cpp-python``, built from source, and
``gguf``); :func:`missing` says what is absent so the benchmark can leave the row out with that note.

Example (skipped when the extra is absent):
    >>> import tempfile, pathlib, torch
    >>> from torchslim.workloads.llama import LlamaSpec, build_llama
    >>> if missing() is None:
    ...     spec = LlamaSpec(hidden=64, intermediate=128, layers=1, heads=2, vocab=300)
    ...     with tempfile.TemporaryDirectory() as d:
    ...         f = write_gguf(build_llama(spec), spec, pathlib.Path(d) / "m.gguf")
    ...         dec = LlamaCppDecoder(f, new_tokens=3, threads=1)
    ...         out = dec(torch.tensor([[1, 2, 3]])).shape
    ...         dec.close()
    ... else:
    ...     out = (1, 3)
    >>> tuple(out)
    (1, 3)
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.workloads.llama import LlamaSpec

__all__ = [
    "FTYPES",
    "LlamaCppDecoder",
    "extra_buffers_work",
    "gguf_read_bytes",
    "missing",
    "quantize_gguf",
    "write_gguf",
]

FTYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
_BYTE_TOKENS = 256
_CONTROL = ("<unk>", "<s>", "</s>")


def missing() -> str | None:
    """None when ``llama_cpp`` and ``gguf`` import; else a one-line note naming what is absent."""
    absent = []
    for name in ("llama_cpp", "gguf"):
        try:
            __import__(name)
        except ImportError:  # an absent optional extra, or a llama.cpp build that does not load
            absent.append(name)
    if not absent:
        return None
    return f"{' and '.join(absent)} not installed (pip install 'torchslim[llamacpp]', builds llama.cpp from source)"


def _rope_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    # transformers stores each head's rotary pairs as (first half, second half); llama.cpp's default RoPE
    # rotates adjacent pairs, so the rows of each head are interleaved: [h, 2, d/2, K] -> [h, d/2, 2, K].
    n, k = w.shape
    return w.reshape(heads, 2, n // heads // 2, k).transpose(1, 2).reshape(n, k)


def _vocab(size: int) -> tuple[list[str], list[int]]:
    import gguf

    if size < len(_CONTROL) + _BYTE_TOKENS:
        raise ValueError(f"a GGUF vocabulary needs at least {len(_CONTROL) + _BYTE_TOKENS} tokens, got {size}")
    tokens = [*_CONTROL, *(f"<0x{b:02X}>" for b in range(_BYTE_TOKENS))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * _BYTE_TOKENS
    rest = size - len(tokens)
    tokens += [f"\u2581t{i}" for i in range(rest)]
    types += [gguf.TokenType.NORMAL] * rest
    return tokens, [int(t) for t in types]


def write_gguf(model: nn.Module, spec: LlamaSpec, path: str | Path) -> Path:
    """Write a ``LlamaForCausalLM`` of shape ``spec`` to ``path`` as a float32 GGUF file; returns the path."""
    import gguf

    cfg = model.config
    path = Path(path)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("torchslim-llama-decode")
    w.add_context_length(spec.max_positions)
    w.add_embedding_length(spec.hidden)
    w.add_block_count(spec.layers)
    w.add_feed_forward_length(spec.intermediate)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(spec.hidden // spec.heads)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(spec.vocab)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    tokens, types = _vocab(spec.vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([0.0] * spec.vocab)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(spec.layers):
        for ours, theirs in per_layer.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    for key, name in names.items():
        t = sd[key]
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = spec.heads if name.endswith("attn_q.weight") else cfg.num_key_value_heads
            t = _rope_permute(t, heads)
        w.add_tensor(name, t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_gguf(src: str | Path, dst: str | Path, ftype: str, threads: int = 2) -> Path:
    """llama.cpp's ``llama_model_quantize`` of ``src`` to ``dst`` with type ``ftype`` (a key of :data:`FTYPES`).

    Raises:
        ValueError: an unknown ``ftype``.
        RuntimeError: llama.cpp reported a failure.
    """
    import llama_cpp

    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {', '.join(FTYPES)}, got {ftype!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[ftype])
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {ftype} failed (code {rc})")
    return Path(dst)


def gguf_read_bytes(path: str | Path) -> int:
    """Bytes one decode step reads from a GGUF model: every tensor but the token embedding, plus one of its rows."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    total = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            total += int(t.n_bytes) // int(t.shape[-1])  # one row (GGUF shapes list the row length first)
        else:
            total += int(t.n_bytes)
    return total


_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]), verbose=False)
llm.eval([1, 2, 3, 4])
llm.eval([5])
"""


def extra_buffers_work(path: str | Path, threads: int = 2, timeout: float = 600) -> bool:
    """Whether llama.cpp runs ``path`` with its extra buffer types (weight repacking, AMX) without crashing:
    a 4-token prompt and one more token, decoded in a child process (a crash there cannot take this one)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(threads)], capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode == 0


@contextlib.contextmanager
def _without_extra_buffers() -> Iterator[None]:
    """Models loaded inside get ``llama_model_params.use_extra_bufts = False``. Hand-written: llama-cpp-python's
    ``Llama`` takes no argument for that field, so the default-parameters function it calls is wrapped."""
    import llama_cpp.llama as binding

    default = binding.llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    binding.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        binding.llama_cpp.llama_model_default_params = default


class LlamaCppDecoder:
    """Greedy batch-1 decoding through llama-cpp-python: ``decoder(prompt [1, P]) -> [1, new_tokens]``.

    Args:
        path: a GGUF model file.
        new_tokens: tokens generated per call.
        threads: llama.cpp threads, for decode and for batches (prefill).
        context: the context length to allocate (prompt + new tokens must fit; prefill tests need more).
        extra_buffers: load with llama.cpp's extra buffer types (its default); None: probe them first with
            :func:`extra_buffers_work` and, where the probe crashes, load without them and say so in ``note``.
    """

    def __init__(
        self,
        path: str | Path,
        new_tokens: int,
        threads: int = 2,
        context: int = 1024,
        extra_buffers: bool | None = True,
    ) -> None:
        from llama_cpp import Llama

        self.path, self.new_tokens, self.note = Path(path), new_tokens, None
        if extra_buffers is None:
            extra_buffers = extra_buffers_work(path, threads)
            if not extra_buffers:
                self.note = (
                    f"{self.path.name}: llama.cpp crashed in a child process with its extra buffer types (weight "
                    "repacking, AMX; llama.cpp issue #20824), so it runs without them here"
                )
        with contextlib.nullcontext() if extra_buffers else _without_extra_buffers():
            self.llm: Any = Llama(
                model_path=str(path),
                n_ctx=context,
                n_batch=min(context, 512),
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )

    def _last_logits(self) -> Any:
        # With logits_all=False llama.cpp outputs only the last position of each batch (row 0 of its buffer);
        # llama-cpp-python no longer copies it into ``scores``, so it is read where ``Llama.eval`` reads it.
        import numpy as np

        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))

    def __call__(self, prompt: torch.Tensor) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval([int(t) for t in prompt[0]])
        out = []
        for step in range(self.new_tokens):
            token = int(self._last_logits().argmax())
            out.append(token)
            if step + 1 < self.new_tokens:
                self.llm.eval([token])
        return torch.tensor([out])

    def logits(self, prompt: torch.Tensor) -> torch.Tensor:
        """The last position's logits ``[vocab]`` after evaluating ``prompt [1, P]`` (for agreement checks)."""
        self.llm.reset()
        self.llm.eval([int(t) for t in prompt[0]])
        return torch.from_numpy(self._last_logits().copy())

    def prefill_seconds(self, tokens: int, runs: int = 1) -> float:
        """Best wall time of evaluating ``tokens`` prompt tokens at once (ids cycling over the vocabulary)."""
        ids = [3 + i % (self.llm.n_vocab() - 3) for i in range(tokens)]
        best = float("inf")
        for _ in range(runs):
            self.llm.reset()
            start = time.perf_counter()
            self.llm.eval(ids)
            best = min(best, time.perf_counter() - start)
        return best

    def close(self) -> None:
        """Free llama.cpp's model and context."""
        self.llm.close()
