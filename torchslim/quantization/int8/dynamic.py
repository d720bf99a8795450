"""``Int8Dynamic``: int8 weights and per-token int8 activations chosen at run time (W8A8 dynamic).

Linear layers become :class:`~torchslim.quantization.int8.modules.Int8DynamicLinear` (``torch._int_mm``,
int8 × int8 → int32) and, by default, embeddings become row-wise
:class:`~torchslim.quantization.int8.modules.Int8Embedding` (MiniLM: 47 of its 91 MB are embeddings),
or with ``embeddings="int4"`` group-wise 4-bit rows.
No calibration is needed; with ``ctx.calibration`` two optional guards use it:

- ``smoothquant=α``: SmoothQuant outlier migration per layer (see :mod:`~torchslim.quantization.common.smoothquant`);
  ``smoothquant="search"`` picks, per layer, the α in {none, 0.25, 0.5, 0.75} whose int8 output has
  the best SQNR on the calibration inputs (one α rarely suits every layer: MiniLM's FFN outputs want
  0.75, most attention projections 0.5).
- ``min_sqnr_db``: a layer whose int8 output SQNR on the calibration inputs falls below the floor
  stays in ``fallback`` precision (bf16 by default) instead, and the report says so (``ctx.events``).
- ``outliers=k``: before falling back, such a layer may keep up to ``k`` input channels (those with
  the largest calibration activations, tried 4, 8, 16, … at a time) in a small float32 product beside
  the int8 one (LLM.int8()'s outlier decomposition); the first count that passes the floor is kept,
  and the report says how many. MiniLM's layer-3 FFN output needs 4 of its 1536 channels (31.8 → 41.1 dB).

``compute_dtype="bfloat16"`` runs everything that stays in floating point (LayerNorm, attention, GELU,
fallback layers, the activations between layers) in bf16 after quantizing, recorded as a ``CastDtype``
step: every element-wise pass moves half the bytes and attention runs on the CPU's bf16 units, while
the int8 layers keep their float32 scales and accumulate in int32.

``compile=True`` compiles the whole model in place (``nn.Module.compile``): Inductor fuses the
per-token quantize with the LayerNorm / GELU before it and the dequantize with the bias and residual
after it, which eager mode runs as separate passes over the activations.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.quantization.common.sqnr import sqnr
    >>> m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> x = torch.randn(8, 16); ref = m(x)
    >>> _ = compress_(m, Int8Dynamic())
    >>> type(m[0]).__name__, bool(sqnr(ref, m(x)) > 30)
    ('Int8DynamicLinear', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn

from torchslim.core.config import Config, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.select import Select
from torchslim.errors import ConfigError
from torchslim.quantization.cast import CastDtype
from torchslim.quantization.common.linears import quantize_linears_
from torchslim.quantization.common.swap import split_targets, swap_int8_
from torchslim.quantization.int8.compile_cpu import compile_model_
from torchslim.quantization.int8.modules import Int8DynamicLinear, Int8Embedding

__all__ = [
    "Int8Dynamic",
    "check_int4_tables",
    "embedding_or_skip",
    "int8_targets",
    "register_int4_rows",
    "swap_int8_embeddings_",
]

# The module ``embeddings="int4"`` builds: :class:`~torchslim.quantization.int4.embedding.Int4Embedding`,
# which registers itself here (the int4 package builds on int8, not the other way round; importing
# ``torchslim.quantization`` loads it).
_INT4_ROWS: list[type[nn.Module]] = []


def register_int4_rows(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: ``cls`` is what ``embeddings="int4"`` swaps tables for.

    ``cls.from_float(embedding, group_size=g)`` builds one (``ValueError``: this table cannot be, it is
    skipped and recorded) and ``cls.check_group_size(embedding_dim, g)`` says why ``g`` cannot split a
    row, or None.
    """
    _INT4_ROWS[:] = [cls]
    return cls


def _int4_rows() -> type[nn.Module]:
    if not _INT4_ROWS:
        raise RuntimeError("no int4 embedding module is registered (import torchslim.quantization)")
    return _INT4_ROWS[0]


@register_config("int8-dynamic")
@dataclass(frozen=True)
class Int8Dynamic(Config):
    """Dynamic int8: per-channel int8 weights, per-token int8 activations, int8 embeddings.

    Embedding tables: ``embeddings="int4"`` stores each selected table (a ``FactorizedEmbedding``'s
    ``table`` too) as group-wise asymmetric 4-bit rows instead of int8 ones
    (:class:`~torchslim.quantization.int4.embedding.Int4Embedding`: two codes per byte, a float16 scale
    and minimum per ``embedding_group_size`` values); a table whose width the group size does not divide
    is refused with a ``ConfigError`` before anything is swapped. ``True`` (recipes' ``embeddings: true``)
    still means int8 rows.

    Example:
        >>> import torch.nn as nn
        >>> from torchslim.api import compress_
        >>> m = nn.Sequential(nn.Embedding(100, 256), nn.Linear(256, 4))
        >>> _ = compress_(m, Int8Dynamic(embeddings="int4", embedding_group_size=128))
        >>> type(m[0]).__name__, tuple(m[0].weight.shape), str(m[0].weight.dtype)
        ('Int4Embedding', (100, 128), 'torch.uint8')

    Args:
        embeddings: how to store the selected ``nn.Embedding`` tables: ``True`` or ``"int8"`` (default):
            int8 rows with a float32 scale per row (4× smaller, gathers stay cheap); ``"int4"``: group-wise
            asymmetric 4-bit rows (:class:`~torchslim.quantization.int4.embedding.Int4Embedding`, about 7.5×
            smaller at ``embedding_group_size=128``); ``False``: leave them in float.
        embedding_group_size: values per float16 scale and minimum of ``"int4"`` rows (a positive even
            divisor of every selected table's width; ignored otherwise).
        compile: ``torch.compile`` the whole model in place after quantizing (fused element-wise passes;
            the first call compiles). Off by default: eager mode works everywhere.
        smoothquant: SmoothQuant migration strength ``α`` in [0, 1], or ``"search"`` for the best α per
            layer (needs calibration); None: off.
        min_sqnr_db: keep a layer in ``fallback`` precision when its int8 output SQNR on the calibration
            data is below this many dB (needs calibration); None: no check.
        fallback: ``"bfloat16"`` (half the bytes) or ``"float32"`` (leave the layer as it is; faster
            than bf16 on CPUs without AMX). With ``compute_dtype="bfloat16"`` every float layer is bf16.
        compute_dtype: ``"float32"`` (default) or ``"bfloat16"``: the dtype of the float layers and of the
            activations between layers (see the module docstring).
        outliers: at most this many input channels per layer may stay in float32 so that a layer under
            ``min_sqnr_db`` still runs in int8 (0: off; needs ``min_sqnr_db``).
    """

    embeddings: bool | Literal["int8", "int4"] = True
    compile: bool = False
    smoothquant: float | Literal["search"] | None = None
    min_sqnr_db: float | None = None
    fallback: Literal["bfloat16", "float32"] = "bfloat16"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    outliers: int = 0
    embedding_group_size: int = 128

    def __post_init__(self) -> None:
        if self.smoothquant != "search" and self.smoothquant is not None:
            check_range(self, "smoothquant", 0.0, 1.0, hint="SmoothQuant's alpha, usually 0.5, or 'search'")
        if self.fallback not in ("bfloat16", "float32"):
            fail(self, "fallback", f"must be 'bfloat16' or 'float32', got {self.fallback!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            fail(self, "compute_dtype", f"must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.min_sqnr_db is not None:
            check_range(self, "min_sqnr_db", 0.0, 100.0, hint="a floor in dB such as 30")
        if isinstance(self.outliers, bool) or not isinstance(self.outliers, int) or self.outliers < 0:
            fail(self, "outliers", f"must be a whole number >= 0, got {self.outliers!r}")
        if self.outliers and self.min_sqnr_db is None:
            fail(self, "outliers", "only acts on layers under min_sqnr_db; set min_sqnr_db too (e.g. 33)")
        if not isinstance(self.compile, bool):
            fail(self, "compile", f"must be true or false, got {self.compile!r}")
        if not isinstance(self.embeddings, bool) and self.embeddings not in ("int8", "int4"):
            fail(self, "embeddings", f"must be true, false, 'int8' or 'int4', got {self.embeddings!r}")
        g = self.embedding_group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 2 or g % 2:
            fail(self, "embedding_group_size", f"must be a positive even integer such as 128, got {g!r}")

    def default_select(self) -> Select:
        return Select(types=("Linear", "Embedding"))


@register_transform(Int8Dynamic, scope="model")
def _int8_dynamic(model: nn.Module, config: Int8Dynamic, select: Select, ctx: Context) -> nn.Module:
    linears, embeddings = int8_targets(model, select, bool(config.embeddings), config.kind, ctx)
    bits = 4 if config.embeddings == "int4" else 8
    if bits == 4:  # before any layer is swapped: a refused table leaves the model as it was
        check_int4_tables(embeddings, config.embedding_group_size, config.kind)
    quantize_linears_(
        model,
        linears,
        lambda linear, smooth: Int8DynamicLinear.from_float(linear, smooth=smooth),
        config.kind,
        ctx,
        smoothquant=config.smoothquant,
        min_sqnr_db=config.min_sqnr_db,
        outliers=config.outliers,
        make_outliers=lambda linear, smooth, idx: Int8DynamicLinear.from_float(linear, smooth=smooth, outliers=idx),
        # Under a bf16 compute dtype the whole-model cast below makes the kept layers bf16 anyway; a
        # partial bf16 cast first would put float32 output hooks on them and promote what follows.
        fallback=config.fallback if config.compute_dtype == "float32" else "float32",
    )
    swap_int8_embeddings_(
        model,
        embeddings,
        config.kind,
        ctx,
        bits=bits,
        group_size=config.embedding_group_size,
    )
    if config.compute_dtype == "bfloat16":
        from torchslim.api import compress_

        compress_(model, CastDtype("bfloat16"), ctx=ctx)  # recorded: ts.load replays it
        ctx.record(f"{config.kind}: compute dtype bfloat16 (layers kept unquantized run in bfloat16)")
    if config.compile:
        compile_model_(model)
    return model


def int8_targets(
    model: nn.Module, select: Select, embeddings: bool, kind: str, ctx: Context
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """The selected ``(name, nn.Linear)`` and, when ``embeddings``, ``(name, nn.Embedding)`` pairs of an
    int8 step (through :func:`split_targets`: compressed or unselected modules are left out)."""
    kinds = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    targets = split_targets(model, select, kinds, kind, ctx)
    return (
        [(n, m) for n, m in targets if isinstance(m, nn.Linear)],
        [(n, m) for n, m in targets if isinstance(m, nn.Embedding)],
    )


def check_int4_tables(embeddings: list[tuple[str, nn.Module]], group_size: int, kind: str) -> None:
    """Raise ``ConfigError`` naming every ``(name, nn.Embedding)`` whose width ``group_size`` does not divide.

    Example:
        >>> check_int4_tables([("emb", nn.Embedding(4, 96))], 32, "int8-dynamic")  # 32 divides 96: passes
        >>> try:
        ...     check_int4_tables([("emb", nn.Embedding(4, 96))], 64, "int8-dynamic")
        ... except ValueError as e:
        ...     print(e.problems[0])
        embedding_group_size: embedding_dim 96 is not a multiple of group_size 64 (table emb); pick a divisor such as 32
    """
    check = _int4_rows().check_group_size
    bad = [(n, why) for n, e in embeddings if (why := check(e.embedding_dim, group_size))]
    if bad:
        raise ConfigError(
            f"{kind}: embeddings 'int4' cannot split {', '.join(n for n, _ in bad)} into groups of {group_size}",
            [f"embedding_group_size: {why} (table {n}); pick a divisor such as 32" for n, why in bad],
        )


def swap_int8_embeddings_(
    model: nn.Module,
    embeddings: list[tuple[str, nn.Module]],
    kind: str,
    ctx: Context,
    *,
    bits: int = 8,
    group_size: int = 128,
) -> None:
    """Swap each ``(name, nn.Embedding)`` for an :class:`Int8Embedding` (``bits=8``) or an
    :class:`~torchslim.quantization.int4.embedding.Int4Embedding` with ``group_size`` values per group
    (``bits=4``); one that cannot be is skipped and recorded.

    Raises:
        ConfigError: ``bits=4`` and ``group_size`` does not divide a table's width (checked for every
            table before any is swapped, so the model is left unchanged).
    """
    if bits == 4:
        check_int4_tables(embeddings, group_size, kind)
    label = kind + (" int4 embeddings" if bits == 4 else " embeddings")
    swap_int8_(model, embeddings, embedding_or_skip(ctx, kind, bits=bits, group_size=group_size), label, ctx)


def embedding_or_skip(ctx: Context, kind: str, *, bits: int = 8, group_size: int = 128):
    """``make(name, embedding)`` for :func:`swap_int8_`: an :class:`Int8Embedding` (or, with ``bits=4``, an
    :class:`~torchslim.quantization.int4.embedding.Int4Embedding` of ``group_size``), or None (skipped,
    recorded) when it cannot be one."""
    if bits not in (4, 8):
        raise ValueError(f"embedding bits must be 4 or 8, got {bits!r}")

    def make(name: str, emb: nn.Module) -> nn.Module | None:
        try:
            if bits == 4:
                return _int4_rows().from_float(emb, group_size=group_size)
            return Int8Embedding.from_float(emb)
        except ValueError as e:
            ctx.record(f"{kind}: skipped {name} ({e})")
            return None

    return make
