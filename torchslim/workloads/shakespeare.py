"""The ``shakespeare-gpt`` workload: a character-level GPT trained here on tiny Shakespeare, scored by perplexity.

The text file (about 1.1 MB, 65 distinct characters) is given by path and only read. The vocabulary is
the sorted set of its characters; the first 90 % of the characters train the model, the last 10 % are
the fixed held-out tail on which ``val_ppl`` is measured:

    val_ppl = exp( mean over tail tokens of −log p(next char | up to block_size previous chars) )

computed on consecutive non-overlapping windows of ``block_size`` characters (the first characters of
each window see a shorter context, so this is a little above a sliding-window figure; it is fixed and
comparable across variants). Lower is better; a model that knows nothing scores the vocabulary size.

The model (:class:`CharGPT`, about 3.2 M parameters by default) is a pre-LayerNorm decoder whose
matrices are all ``nn.Linear`` with ``in_features`` a multiple of 128 (``d_model`` and ``4·d_model``),
so group-wise int4 at g = 128 applies to every one of them; the output head is padded to a multiple of
64 rows so torch's int4 CPU kernel (``N % 16 == 0``) takes it too. It is trained on first use (AdamW,
bf16 autocast, progress bar) and cached as safetensors under
``cache_dir()/shakespeare-gpt``, keyed by the architecture, the training recipe and the data's sha256.

Example:
    >>> import torch
    >>> m = CharGPT(65, GPTArch(n_layer=1, d_model=128, n_head=2, block_size=16))
    >>> m(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 16, 65])
    >>> [lin.in_features % 128 for lin in m.modules() if isinstance(lin, torch.nn.Linear)]
    [0, 0, 0, 0, 0]
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import UsageError
from torchslim.training import fit_
from torchslim.workloads.base import Workload, cache_dir, cached_or_trained
from torchslim.workloads.datadir import data_path

__all__ = [
    "CharGPT",
    "GPTArch",
    "GPTTrain",
    "ShakespeareText",
    "ShakespeareWorkload",
    "load_text",
]

log = logging.getLogger(__name__)

# Relative to the working directory, as the tests and CLI examples run from the repository root.
DATA_FILE = "tinyshakespeare/input.txt"  # under $TORCHSLIM_DATA
VAL_FRACTION = 0.1
# Bump when the data pipeline or training loop changes in a way the cache key below cannot see.
_RECIPE_VERSION = 1
_EVAL_BATCH = 32
_CALIB_SEED = 1234


@dataclass(frozen=True)
class GPTArch:
    """The shape of a :class:`CharGPT`.

    Args:
        n_layer: transformer blocks.
        d_model: width; a multiple of 128 keeps every Linear int4-g128 friendly.
        n_head: attention heads (``d_model`` must divide evenly).
        block_size: context length in characters.

    Example:
        >>> GPTArch().d_model % 128
        0
    """

    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    block_size: int = 128

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTArch.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTArch: d_model {self.d_model} is not divisible by n_head {self.n_head}")


@dataclass(frozen=True)
class GPTTrain:
    """The training recipe (part of the cache key).

    Args:
        steps: optimizer steps.
        batch: windows of ``block_size`` characters per step.
        lr: peak AdamW learning rate (warm-up then cosine decay, see :func:`torchslim.training.fit_`).
        seed: seeds the initial weights and the window sampling.
        bf16_autocast: run forward/backward under CPU bf16 autocast (fp32 master weights), about 2×
            faster on CPUs with AVX-512 bf16.

    Example:
        >>> GPTTrain().steps > GPTTrain(steps=10).steps
        True
    """

    steps: int = 700
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0
    bf16_autocast: bool = True


class _Block(nn.Module):
    """Pre-LayerNorm block: causal self-attention then a GELU MLP, each with a residual."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # [B, T, 3D] -> 3 × [B, H, T, D/H]
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, D/H]
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """A character-level GPT: token + learned position embeddings, ``n_layer`` blocks, LayerNorm, Linear head.

    Args:
        vocab_size: number of characters; the head has this many outputs rounded up to a multiple of
            64 (for the int4 kernel's row tiling), and ``forward`` returns only the first ``vocab_size``.
        arch: the shape.

    Example:
        >>> import torch
        >>> m = CharGPT(10, GPTArch(n_layer=1, d_model=128, n_head=2, block_size=8))
        >>> m.head.out_features, m(torch.zeros(1, 5, dtype=torch.long)).shape
        (64, torch.Size([1, 5, 10]))
    """

    def __init__(self, vocab_size: int, arch: GPTArch | None = None) -> None:
        super().__init__()
        arch = arch or GPTArch()
        self.vocab_size, self.block_size = vocab_size, arch.block_size
        d = arch.d_model
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(arch.block_size, d)
        self.blocks = nn.ModuleList(_Block(d, arch.n_head) for _ in range(arch.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 64 * math.ceil(vocab_size / 64), bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # GPT-2's initialisation: N(0, 0.02) for matrices and embeddings, zero biases.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-character logits ``[B, T, vocab_size]`` for character ids ``idx`` ``[B, T]`` (T ≤ block_size)."""
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"CharGPT: sequence of {t} characters exceeds block_size {self.block_size}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))[..., : self.vocab_size]


@dataclass(frozen=True)
class ShakespeareText:
    """The encoded text: ``ids`` ``[N]`` int64, ``chars`` (id -> character), ``split`` (first held-out index)."""

    ids: torch.Tensor
    chars: str
    split: int
    sha256: str

    @property
    def train(self) -> torch.Tensor:
        return self.ids[: self.split]

    @property
    def val(self) -> torch.Tensor:
        return self.ids[self.split :]


def _resolve(path: str | Path | None) -> Path:
    p = data_path(path, DATA_FILE, "shakespeare")
    if p.is_dir():
        p = p / "input.txt"
    if not p.is_file():
        raise UsageError(
            f"tiny Shakespeare text not found at {str(p)!r}; pass its path with --data FILE "
            f"(e.g. {DATA_FILE}, the 1.1 MB input.txt of char-rnn's tinyshakespeare)"
        )
    return p.resolve()


@functools.lru_cache(maxsize=2)
def _load(path: Path, mtime_ns: int) -> ShakespeareText:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    if len(text) < 1000:
        raise UsageError(f"{path} holds {len(text)} characters; tiny Shakespeare has about 1.1 million")
    chars = "".join(sorted(set(text)))
    lut = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lut[c] for c in text], dtype=torch.long)
    split = int(len(ids) * (1 - VAL_FRACTION))
    return ShakespeareText(ids, chars, split, hashlib.sha256(raw).hexdigest())


def load_text(path: str | Path | None = None) -> ShakespeareText:
    """Read and encode the text file at ``path`` (a folder means its ``input.txt``); cached per process.

    Raises:
        UsageError: the file is missing or far too short.

    Example:
        >>> load_text("/nonexistent/input.txt")
        Traceback (most recent call last):
        ...
        torchslim.errors.UsageError: tiny Shakespeare text not found at '/nonexistent/input.txt'; pass its path with --data FILE (e.g. tinyshakespeare/input.txt, the 1.1 MB input.txt of char-rnn's tinyshakespeare)
    """
    p = _resolve(path)
    return _load(p, p.stat().st_mtime_ns)


class _Windows:
    """``steps`` batches of ``(x [B, T], y [B, T])`` random windows of ``ids`` (y is x shifted by one), seeded."""

    def __init__(self, ids: torch.Tensor, steps: int, batch: int, block: int, seed: int) -> None:
        self.ids, self.steps, self.batch, self.block, self.seed = ids, steps, batch, block, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        offsets = torch.arange(self.block + 1)
        for _ in range(self.steps):
            start = torch.randint(0, len(self.ids) - self.block - 1, (self.batch, 1), generator=gen)
            w = self.ids[start + offsets]  # [B, T+1]
            yield w[:, :-1], w[:, 1:]


def _lm_loss(autocast: bool) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Next-character cross-entropy ``loss(model, x [B, T], y [B, T])``, the forward under bf16 autocast if asked."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    return loss


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    ref = next((p for p in model.parameters()), None)
    return ref.device if ref is not None else torch.device("cpu")


class ShakespeareWorkload(Workload):
    """Tiny Shakespeare: a char-level GPT trained here (cached), ``val_ppl`` on the held-out tail (lower is better).

    Args:
        data: the text file (or its folder); default ``$TORCHSLIM_DATA/tinyshakespeare/input.txt``.
        arch: model shape (default about 3.2 M parameters).
        train: training recipe.
        eval_tokens: score only the first this many tail characters (None: the whole tail, ~111 k).

    Example:
        >>> ShakespeareWorkload.metric, ShakespeareWorkload.higher_is_better
        ('val_ppl', False)
    """

    name = "shakespeare-gpt"
    metric = "val_ppl"
    higher_is_better = False

    def __init__(
        self,
        data: str | Path | None = None,
        *,
        arch: GPTArch | None = None,
        train: GPTTrain | None = None,
        eval_tokens: int | None = None,
    ) -> None:
        self.text = load_text(data)
        self.arch = arch or GPTArch()
        self.train_cfg = train or GPTTrain()
        self.eval_tokens = eval_tokens
        self._state: dict[str, torch.Tensor] | None = None

    # -- data -------------------------------------------------------------------------------------

    def calibration(self, n_batches: int = 8, batch: int = 8) -> list[tuple[torch.Tensor]]:
        """``n_batches`` fixed batches of ``batch`` random training windows, each a 1-tuple ``(x [B, T],)``."""
        windows = _Windows(self.text.train, n_batches, batch, self.arch.block_size, _CALIB_SEED)
        return [(x,) for x, _ in windows]

    def val_windows(self) -> torch.Tensor:
        """The held-out tail cut into non-overlapping windows ``[W, T + 1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``)."""
        tail = self.text.val
        if self.eval_tokens is not None:
            tail = tail[: self.eval_tokens + 1]
        t = self.arch.block_size
        n = (len(tail) - 1) // t
        if n < 1:
            raise UsageError(f"held-out tail of {len(tail)} characters is shorter than one window of {t + 1}")
        # Window i covers tail[i·T : i·T + T + 1]; consecutive windows share one character.
        return tail[torch.arange(n)[:, None] * t + torch.arange(t + 1)]

    def example_inputs(self) -> tuple[torch.Tensor]:
        """Eight held-out windows ``([8, block_size],)`` for tracing and latency."""
        return (self.val_windows()[:8, :-1].clone(),)

    # -- model ------------------------------------------------------------------------------------

    def factory(self) -> nn.Module:
        """An untrained :class:`CharGPT` of the workload's shape and vocabulary."""
        return CharGPT(len(self.text.chars), self.arch)

    def _seeded(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.train_cfg.seed)
            return self.factory()

    def cache_path(self) -> Path:
        """Where the trained weights are cached (the name hashes architecture, recipe and data)."""
        spec = f"{self._seeded()!r}|{asdict(self.arch)}|{asdict(self.train_cfg)}|v{_RECIPE_VERSION}|{self.text.sha256}"
        key = hashlib.sha256(spec.encode()).hexdigest()[:12]
        return cache_dir() / "shakespeare-gpt" / f"gpt-{key}.safetensors"

    def _load_or_train(self) -> dict[str, torch.Tensor]:
        def train() -> nn.Module:
            cfg = self.train_cfg
            batches = _Windows(self.text.train, cfg.steps, cfg.batch, self.arch.block_size, cfg.seed)
            model = fit_(
                self._seeded(),
                lambda: batches,
                epochs=1,
                lr=cfg.lr,
                weight_decay=0.1,
                loss_fn=_lm_loss(cfg.bf16_autocast),
                seed=cfg.seed,
                desc="shakespeare-gpt",
            )
            return model

        return cached_or_trained(self.cache_path(), self._seeded, train, "shakespeare-gpt")

    def model(self) -> nn.Module:
        """The trained model in eval mode; a fresh copy each call, so in-place compression is safe.

        Trains and caches on first use.
        """
        if self._state is None:
            self._state = self._load_or_train()
        model = self._seeded()
        model.load_state_dict(self._state, strict=True)
        return model.eval()

    # -- quality ----------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Perplexity of ``model`` on the held-out tail (``split`` ``"val"``; ``"test"`` is the same tail).

        Runs under ``torch.inference_mode`` in eval mode and restores the model's previous mode.

        Returns:
            ``{"val_ppl": exp(mean cross-entropy), "val_loss": mean cross-entropy in nats}``.

        Raises:
            ValueError: for another split.
        """
        if split not in ("val", "test"):
            raise ValueError(f"unknown split {split!r}; shakespeare-gpt has one held-out tail: use 'val' (or 'test')")
        windows = self.val_windows()
        device = _device_of(model)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            with torch.inference_mode():
                for start in range(0, len(windows), _EVAL_BATCH):
                    w = windows[start : start + _EVAL_BATCH].to(device)
                    logits = model(w[:, :-1]).float()
                    total += float(
                        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
                    )
                    count += w[:, 1:].numel()
        finally:
            model.train(was_training)
        loss = total / count
        return {"val_ppl": math.exp(loss), "val_loss": loss}

    def context(self, seed: int = 0) -> Any:
        """A Context with held-out example inputs, training-part calibration and ``val_ppl`` evaluation."""
        from torchslim.core.context import Context

        return Context(
            example_inputs=self.example_inputs(),
            calibration=self.calibration(),
            eval_fn=lambda m: self.evaluate(m, "val"),
            seed=seed,
        )
