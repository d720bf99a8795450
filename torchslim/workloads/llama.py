"""The ``llama-decode`` workload: greedy decoding at batch 1 of a LLaMA-shaped model with seeded random weights.

Decoding one token at batch 1 reads every Linear weight once and does little arithmetic per byte, so
its speed is bound by memory bandwidth: ``time/token ≥ bytes of weights read per token / bandwidth``.
This workload measures that regime. The model is transformers' ``LlamaForCausalLM`` built from a
``LlamaConfig`` (no download, no tokenizer) and initialised from a fixed seed; its quality is not a
question (speed only), the metric is ``tokens_per_s``.

Sizes (:data:`SIZES`): ``"full"`` is the issue's reference shape (hidden 2048, 8 layers, 32 heads,
MLP 5632, vocab 32 000: 542 M parameters, 2.2 GB in fp32); ``"quick"`` (hidden 1024, 4 layers: 116 M
parameters) is for fast checks; :class:`LlamaSpec` takes any shape (tests use a tiny one).

:func:`copy_bandwidth` measures the machine's memory bandwidth (median of large tensor copies, bytes
read + written per second) and :func:`decode_bytes` the bytes one decode step reads (every tensor but
the embedding table, of which one row is read), so a benchmark row can say how far it is from the bound.

Example:
    >>> wl = LlamaDecodeWorkload(LlamaSpec(hidden=64, intermediate=128, layers=1, heads=2, vocab=256),
    ...                          new_tokens=4, prompt_tokens=3)
    >>> out = wl.decoder(wl.model())(*wl.example_inputs())
    >>> out.shape
    torch.Size([1, 4])
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import UsageError
from torchslim.workloads.base import Workload

__all__ = [
    "SIZES",
    "GreedyDecoder",
    "LlamaDecodeWorkload",
    "LlamaSpec",
    "build_llama",
    "copy_bandwidth",
    "decode_bytes",
]


@dataclass(frozen=True)
class LlamaSpec:
    """The shape of a LLaMA model (untied input and output embeddings).

    ``kv_heads`` is the number of key/value heads: ``None`` (the default) means one per query head
    (multi-head attention); fewer, dividing ``heads``, is grouped-query attention (Ainslie et al. 2023,
    "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints").

    Example:
        >>> SIZES["full"].params() // 10**6
        542
        >>> LlamaSpec(hidden=256, intermediate=512, layers=4, heads=4, kv_heads=2, vocab=512).label()
        'h256-i512-l4-a4-kv2-v512'
    """

    hidden: int = 2048
    intermediate: int = 5632
    layers: int = 8
    heads: int = 32
    vocab: int = 32000
    max_positions: int = 2048
    kv_heads: int | None = None

    def __post_init__(self) -> None:
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)  # frozen: set once, here
        for name in ("hidden", "intermediate", "layers", "heads", "vocab", "max_positions", "kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaSpec.{name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"LlamaSpec: hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"LlamaSpec: heads {self.heads} is not divisible by kv_heads {self.kv_heads}")

    def params(self) -> int:
        """Parameter count: embeddings, head, and per layer the attention (query and output ``h²`` each, key
        and value ``h·kv_heads·head_dim`` each), 3·h·i MLP and 2 norms."""
        h = self.hidden
        kv_width = self.kv_heads * (h // self.heads)
        per_layer = 2 * h * h + 2 * h * kv_width + 3 * h * self.intermediate + 2 * h
        return 2 * self.vocab * h + self.layers * per_layer + h

    def label(self) -> str:
        """A short name of the shape (``max_positions`` aside), e.g. for a cache folder."""
        return f"h{self.hidden}-i{self.intermediate}-l{self.layers}-a{self.heads}-kv{self.kv_heads}-v{self.vocab}"

    def describe(self) -> str:
        """The shape in words, with its parameter count."""
        return (
            f"hidden {self.hidden}, MLP {self.intermediate}, {self.layers} blocks, {self.heads} heads, "
            f"vocab {self.vocab} ({self.params() / 1e6:,.1f} M parameters)"
        )

    def config(self, **overrides: Any) -> Any:
        """The transformers ``LlamaConfig`` (SDPA attention, untied embeddings); ``overrides`` are further
        ``LlamaConfig`` arguments (e.g. ``dtype``)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.max_positions,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
            **overrides,
        )


SIZES: dict[str, LlamaSpec] = {
    "full": LlamaSpec(),
    "quick": LlamaSpec(hidden=1024, intermediate=2816, layers=4, heads=16),
}


def build_llama(spec: LlamaSpec | None = None, seed: int = 0) -> nn.Module:
    """A ``LlamaForCausalLM`` of shape ``spec`` with weights drawn from ``seed`` (caller's RNG untouched), in eval mode.

    Raises:
        UsageError: transformers is not installed.

    Example:
        >>> m = build_llama(LlamaSpec(hidden=32, intermediate=64, layers=1, heads=2, vocab=64))
        >>> sum(p.numel() for p in m.parameters()) == LlamaSpec(32, 64, 1, 2, 64).params()
        True
    """
    try:
        from transformers import LlamaForCausalLM
    except ImportError:
        raise UsageError("the llama-decode workload needs transformers: pip install 'torchslim[nlp]'") from None
    spec = spec or LlamaSpec()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(spec.config()).eval()


class GreedyDecoder(nn.Module):
    """Greedy decoding with a KV cache: ``forward(prompt [1, P]) -> new token ids [1, new_tokens]``.

    The prompt is prefilled in one call (whose last logits give the first new token), then each further
    token is one forward of a single position; no early stop at an end-of-sequence id, so every call does
    exactly ``new_tokens`` forwards.

    Args:
        model: a transformers causal LM (``LlamaForCausalLM`` or a compressed copy of one).
        new_tokens: tokens to generate per call.
    """

    def __init__(self, model: nn.Module, new_tokens: int) -> None:
        super().__init__()
        if new_tokens < 1:
            raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
        self.model, self.new_tokens = model, new_tokens

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        tokens = []
        ids = prompt
        for _ in range(self.new_tokens):
            logits = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits  # [1, 1, V]
            ids = logits[:, -1].argmax(dim=-1, keepdim=True)  # [1, 1]
            tokens.append(ids)
        return torch.cat(tokens, dim=1)


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 9) -> float:
    """Memory bandwidth in bytes/s: (read + write) / time of copying an ``nbytes`` buffer, the median over
    ``repeats`` copies; the larger of buffers in ordinary pages and in huge pages
    (:mod:`torchslim.kernels.hugepages`, where the system gives them), timed interleaved, so that a kernel
    reading huge-page weights is held to the bandwidth huge pages reach.

    Uses torch's current thread count (time it with the threads the decode uses).

    Example:
        >>> copy_bandwidth(2**20, repeats=3) > 1e8
        True
    """
    from torchslim.kernels import hugepages

    pairs = [(torch.ones(nbytes // 4, dtype=torch.float32), torch.empty(nbytes // 4, dtype=torch.float32))]
    if hugepages.available():
        pairs.append(
            (hugepages.zeros((nbytes // 4,), torch.float32).fill_(1), hugepages.zeros((nbytes // 4,), torch.float32))
        )
    times: list[list[float]] = [[] for _ in pairs]
    for src, dst in pairs:
        dst.copy_(src)  # first touch: page faults are not bandwidth
    for _ in range(repeats):
        for i, (src, dst) in enumerate(pairs):
            start = time.perf_counter()
            dst.copy_(src)
            times[i].append(time.perf_counter() - start)
    return max(2 * nbytes / statistics.median(t) for t in times)


def decode_bytes(size_bytes: int, model: nn.Module) -> int:
    """Bytes one decode step reads: the model's stored bytes less its embedding tables (one row each is read).

    Args:
        size_bytes: the model's stored size (its artifact or ``torch.save`` bytes).
        model: the model, to find its ``nn.Embedding`` tables.

    Example:
        >>> m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
        >>> decode_bytes(10 * 4 * 4 + 20 * 4, m)
        96
    """
    emb = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    table = sum(w.numel() * w.element_size() for w in emb)
    row = sum(w.shape[1] * w.element_size() for w in emb)
    return size_bytes - table + row


class LlamaDecodeWorkload(Workload):
    """Batch-1 greedy decode of a seeded random LLaMA shape; ``tokens_per_s`` (speed only).

    Args:
        size: a name from :data:`SIZES` or a :class:`LlamaSpec`.
        new_tokens: tokens generated per timed call.
        prompt_tokens: length of the fixed prompt (ids ``1..P``).
        seed: weight seed.

    Example:
        >>> LlamaDecodeWorkload.metric, LlamaDecodeWorkload.higher_is_better
        ('tokens_per_s', True)
    """

    name = "llama-decode"
    metric = "tokens_per_s"
    higher_is_better = True
    has_quality = False  # random weights: the metric is speed, there is no output quality to keep

    def __init__(
        self, size: str | LlamaSpec = "full", *, new_tokens: int = 16, prompt_tokens: int = 8, seed: int = 0
    ) -> None:
        if isinstance(size, str):
            if size not in SIZES:
                raise UsageError(f"unknown llama-decode size {size!r}; use one of {', '.join(SIZES)}")
            size = SIZES[size]
        if prompt_tokens < 1 or prompt_tokens + new_tokens > size.max_positions:
            raise ValueError(
                f"prompt_tokens {prompt_tokens} + new_tokens {new_tokens} must be in [2, {size.max_positions}]"
            )
        self.spec, self.new_tokens, self.prompt_tokens, self.seed = size, new_tokens, prompt_tokens, seed

    def model(self) -> nn.Module:
        """The seeded random ``LlamaForCausalLM`` in eval mode (fresh each call)."""
        return build_llama(self.spec, self.seed)

    def factory(self) -> nn.Module:
        """The same architecture (with the same seeded weights: there is nothing trained to load)."""
        return build_llama(self.spec, self.seed)

    def example_inputs(self) -> tuple[torch.Tensor]:
        """The fixed prompt ``([1, prompt_tokens],)`` of ids ``1..prompt_tokens``."""
        return (torch.arange(1, self.prompt_tokens + 1, dtype=torch.long)[None] % self.spec.vocab,)

    def decoder(self, model: nn.Module) -> GreedyDecoder:
        """``model`` wrapped to generate :attr:`new_tokens` tokens per call from a prompt."""
        return GreedyDecoder(model, self.new_tokens)

    def evaluate(self, model: nn.Module, split: str = "test", *, runs: int = 5) -> dict[str, float]:
        """Tokens per second of greedy decoding (median of ``runs`` timed calls after one warm-up).

        ``split`` is ignored (there is no data); the figure uses torch's current thread count.
        """
        from torchslim.measure.latency import measure_latency

        lat = measure_latency(self.decoder(model), self.example_inputs(), warmup=1, runs=runs)
        return {"tokens_per_s": self.new_tokens / (lat.median_ms / 1e3)}

    def calibration(self, n_batches: int = 2) -> list[tuple[torch.Tensor]]:
        """Seeded random token batches ``([1, 64],)`` (random weights have no data; enough for calibrated methods)."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        return [(torch.randint(0, self.spec.vocab, (1, 64), generator=gen),) for _ in range(n_batches)]

    def context(self, seed: int = 0) -> Any:
        """A Context with the prompt as example inputs, seeded random calibration tokens and decode speed as quality."""
        from torchslim.core.context import Context

        return Context(
            example_inputs=self.example_inputs(),
            calibration=self.calibration(),
            eval_fn=lambda m: self.evaluate(m, runs=3),
            seed=seed,
        )
