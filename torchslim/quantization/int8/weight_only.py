"""``Int8WeightOnly``: int8 per-channel weights, float activations (W8A16 / W8A32).

Linear layers become :class:`~torchslim.quantization.int8.modules.Int8WeightOnlyLinear`
(``aten._weight_int8pack_mm`` for 16-bit activations) and embeddings
:class:`~torchslim.quantization.int8.modules.Int8Embedding`. Activations keep their precision, so quality
is the closest to fp32 of the int8 schemes; the win is size (4× smaller weights) and memory traffic
(small batches, decoding); large compute-bound batches run about as fast as fp32 on CPU.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> m = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4))
    >>> _ = compress_(m, Int8WeightOnly())
    >>> [type(c).__name__ for c in m]
    ['Int8Embedding', 'Int8WeightOnlyLinear']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from torchslim.core.config import Config, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.quantization.common.linears import quantize_linears_
from torchslim.quantization.int8.dynamic import int8_targets, swap_int8_embeddings_
from torchslim.quantization.int8.modules import Int8WeightOnlyLinear

__all__ = ["Int8WeightOnly"]


@register_config("int8-weight-only")
@dataclass(frozen=True)
class Int8WeightOnly(Config):
    """Int8 weights (symmetric, per output channel / per embedding row), float activations.

    Args:
        embeddings: also store ``nn.Embedding`` tables as int8 rows.
        min_sqnr_db: keep a layer in bf16 when its output SQNR on ``ctx.calibration`` is below this; None: no check.
    """

    embeddings: bool = True
    min_sqnr_db: float | None = None

    def __post_init__(self) -> None:
        if self.min_sqnr_db is not None:
            check_range(self, "min_sqnr_db", 0.0, 100.0, hint="a floor in dB such as 30")
        if not isinstance(self.embeddings, bool):
            fail(self, "embeddings", f"must be true or false, got {self.embeddings!r}")

    def default_select(self) -> Select:
        return Select(types=("Linear", "Embedding"))


@register_transform(Int8WeightOnly, scope="model")
def _int8_weight_only(model: nn.Module, config: Int8WeightOnly, select: Select, ctx: Context) -> nn.Module:
    linears, embeddings = int8_targets(model, select, config.embeddings, config.kind, ctx)
    quantize_linears_(
        model,
        linears,
        lambda linear, smooth: Int8WeightOnlyLinear.from_float(linear),
        config.kind,
        ctx,
        min_sqnr_db=config.min_sqnr_db,
    )
    swap_int8_embeddings_(model, embeddings, config.kind, ctx)
    return model
