"""``FactorizeEmbedding``: an embedding table as a thin table times a projection, from a truncated SVD.

A table ``E ∈ R^{V×d}`` (one row per token) becomes ``E ≈ T P`` with ``T ∈ R^{V×r}`` and
``P ∈ R^{r×d}``: the lookup of token ``i`` returns ``T[i] P``. With ``E = U Σ Vᵀ``, the best rank-``r``
approximation (Eckart–Young) gives ``T = U_r Σ_r`` and ``P = V_rᵀ``. It stores ``r·(V + d)`` values
instead of ``V·d`` and keeps a row for every token of the vocabulary (no trimming). The factorized
table is ALBERT's (Lan et al., 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations"), there trained from scratch; here it is initialised from the pretrained table and
recovered by distillation. Both halves are plain modules (``table``: ``nn.Embedding``, ``proj``:
``nn.Linear`` without bias), so int8 quantization stores ``table`` as int8 rows and ``proj`` as an
int8 Linear, and ``torch.compile`` traces the gather and the projection like any layer.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> m = nn.Sequential(nn.Embedding(1000, 64), nn.Linear(64, 2))
    >>> _ = compress_(m, FactorizeEmbedding(rank=16))
    >>> type(m[0]).__name__, tuple(m[0].table.weight.shape), tuple(m[0].proj.weight.shape)
    ('FactorizedEmbedding', (1000, 16), (64, 16))
    >>> m(torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 3, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.config import Config, check_positive_int, register_config
from torchslim.core.context import Context
from torchslim.core.modspec import module_from_spec, register_spec_module
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.core.structure import op_layers, record_op, register_replay
from torchslim.core.walker import replace_module_
from torchslim.errors import UnsafeInputError

__all__ = ["FactorizeEmbedding", "FactorizedEmbedding", "factorize_embedding", "svd_factors"]


def svd_factors(table: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T [V, r], P [r, d])`` with ``T @ P`` the best rank-``rank`` approximation of ``table [V, d]`` (float64 SVD).

    Example:
        >>> e = torch.randn(50, 8)
        >>> t, p = svd_factors(e, 8)
        >>> torch.allclose(t @ p, e, atol=1e-5)
        True
    """
    u, s, vh = torch.linalg.svd(table.detach().double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(table.dtype), vh[:rank].to(table.dtype)


@register_spec_module
class FactorizedEmbedding(nn.Module):
    """``forward(ids) = proj(table(ids))``: ``num_embeddings`` rows of width ``rank`` projected to ``embedding_dim``.

    It has no dense ``weight``: a model that ties its output layer to the input table (reads
    ``get_input_embeddings().weight``) must keep that table whole (leave it out of the select).

    Example:
        >>> emb = FactorizedEmbedding(10, 8, rank=2, padding_idx=0)
        >>> emb(torch.tensor([0, 3])).shape
        torch.Size([2, 8])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.padding_idx = padding_idx
        self.table = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.proj = nn.Linear(rank, embedding_dim, bias=False)

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "rank": self.rank,
            "padding_idx": self.padding_idx,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FactorizedEmbedding:
        """An empty (randomly initialised) module from :meth:`torchslim_spec`'s output."""
        pad = spec["padding_idx"]
        if pad is not None and not isinstance(pad, int):
            raise ValueError(f"padding_idx must be an integer or null, got {pad!r}")
        return cls(int(spec["num_embeddings"]), int(spec["embedding_dim"]), int(spec["rank"]), pad)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(ids))


def factorize_embedding(emb: nn.Embedding, rank: int) -> FactorizedEmbedding:
    """The rank-``rank`` :class:`FactorizedEmbedding` closest to ``emb`` (the padding row stays exactly zero if it was).

    Example:
        >>> emb = nn.Embedding(40, 8)
        >>> ids = torch.arange(40)
        >>> torch.allclose(factorize_embedding(emb, 8)(ids), emb(ids), atol=1e-5)
        True
    """
    w = emb.weight
    new = FactorizedEmbedding(emb.num_embeddings, emb.embedding_dim, rank, emb.padding_idx)
    new = new.to(device=w.device, dtype=w.dtype).train(emb.training)
    table, proj = svd_factors(w, rank)
    pad = emb.padding_idx
    if pad is not None and not bool(w[pad].any()):
        table[pad] = 0  # float64 rounding leaves ~1e-17 there; padding tokens must add nothing
    with torch.no_grad():
        new.table.weight.copy_(table)
        new.proj.weight.copy_(proj.T)
    return new


@register_config("factorize-embedding")
@dataclass(frozen=True)
class FactorizeEmbedding(Config):
    """Replace ``nn.Embedding`` tables by a rank-``rank`` :class:`FactorizedEmbedding` (truncated SVD).

    Args:
        rank: width of the thin table; a table is factored only where ``rank·(V + d) < V·d``.

    Raises:
        ConfigError: ``rank`` not a positive integer.
    """

    rank: int = 128

    def __post_init__(self) -> None:
        check_positive_int(self, "rank")

    def default_select(self) -> Select:
        return Select(types=("Embedding",))


def _fits(emb: nn.Module, rank: Any) -> bool:
    """A plain ``nn.Embedding`` (no max_norm, dense gradients) that a rank-``rank`` factorization makes smaller."""
    if type(emb) is not nn.Embedding or emb.max_norm is not None or emb.sparse:
        return False
    v, d = emb.num_embeddings, emb.embedding_dim
    return isinstance(rank, int) and 0 < rank < d and rank * (v + d) < v * d


@register_transform(FactorizeEmbedding, scope="model")
def _factorize(model: nn.Module, config: FactorizeEmbedding, select: Select, ctx: Context) -> nn.Module:
    done: dict[str, int] = {}
    for name, module in list(select.modules(model)):
        if name and _fits(module, config.rank):
            replace_module_(model, name, factorize_embedding(module, config.rank))  # type: ignore[arg-type]
            done[name] = config.rank
    if done:
        record_op(model, "factorize-embedding", {"layers": done})
    ctx.record(f"factorize-embedding: {len(done)} table(s) at rank {config.rank}: {', '.join(done) or 'none'}")
    return model


@register_replay("factorize-embedding")
def _replay(model: nn.Module, data: dict[str, Any]) -> nn.Module:
    for name, emb, rank in op_layers(model, "factorize-embedding", data):
        if not _fits(emb, rank):
            raise UnsafeInputError(f"factorize-embedding op does not fit {name!r} (rank {rank!r})")
        spec = {
            "class": "FactorizedEmbedding",
            "num_embeddings": emb.num_embeddings,
            "embedding_dim": emb.embedding_dim,
            "rank": rank,
            "padding_idx": emb.padding_idx,
        }
        # Built empty (no SVD of the fresh table): the load that follows fills it.
        new = module_from_spec(spec).to(device=emb.weight.device, dtype=emb.weight.dtype)
        replace_module_(model, name, new)
    return model
