"""CPU kernels built for torchslim's compressed layers: the W4A8 linear (int4 weights, int8 activations) and
the static int8 convolution ops (:mod:`torchslim.kernels.qconv`: the 1×1 / im2col convolution on AMX tiles or
AVX-512 VNNI with its fused epilogue; :mod:`torchslim.kernels.qdwconv`: the depthwise convolution; per-layer
plans, the squeeze-and-excitation product's quantization, the global average pool and the max-pool of uint8
codes), all
from the C++ sources in ``csrc/``, built once per machine.

``w4a8_linear`` multiplies rows of activations (decode: one token; prefill: hundreds) by a grouped int4
weight in the packed layout of :mod:`torchslim.kernels.layout`. Activations are quantized to int8 per row
(symmetric, one scale each), the 4-bit codes are widened to bytes in registers and multiplied with
AVX-512 VNNI dot products (AVX2 on CPUs without them), one int32 accumulator per output row and
group, scaled into float32 — the
scheme of llama.cpp's Q4_0 × Q8_0 dot product, with a zero point per group as in GPTQ
(Frantar et al., arXiv:2210.17323) and per-token activation scales as in LLM.int8()
(Dettmers et al., arXiv:2208.07339). Threads split the output rows. Many rows make it an int8 GEMM:
each unpacked weight chunk serves a pass of up to 8 rows, and each thread walks its weight range once
per block of 64 rows so that the block's int8 activations stay in cache. float32 and bfloat16 inputs
are read as they are and the output is written in the input's dtype (bias added in float32 first).

The C++ source is compiled at the first call (:func:`load`); on a CPU without AVX-512 VNNI or AVX2 a
portable C++ loop computes the same sums, and when the build fails a torch reference does, so results
are correct everywhere. :func:`available` says whether a vectorized path runs, :func:`backend` which.

Example:
    >>> import torch
    >>> from torchslim import kernels
    >>> codes = torch.randint(0, 16, (48, 64), dtype=torch.uint8)
    >>> scales, zeros = torch.full((48, 2), 0.01).bfloat16(), torch.zeros(48, 2).bfloat16()
    >>> packed = kernels.pack_int4(codes, scales, zeros, group_size=32)
    >>> x = torch.randn(2, 64)
    >>> y = kernels.w4a8_linear(x, packed, 48, 32, path="reference")
    >>> w = kernels.dequantize(packed, 48, 32)
    >>> y.shape, bool(torch.allclose(y, x @ w.t(), atol=0.05))
    (torch.Size([2, 48]), True)
"""

from __future__ import annotations

import torch

from torchslim.kernels.layout import pack_int4, packed_shape, unpack_int4
from torchslim.kernels.ops import ISAS, W4A8_LINEAR, W4A8_LINEAR_ON, backend, load
from torchslim.kernels.reference import dequantize, quantize_rows, w4a8_linear_reference

__all__ = [
    "ISAS",
    "available",
    "backend",
    "dequantize",
    "load",
    "pack_int4",
    "packed_shape",
    "paths",
    "quantize_rows",
    "unpack_int4",
    "w4a8_linear",
    "w4a8_linear_reference",
]

_PATHS = ("auto", *ISAS, "reference")


def available() -> bool:
    """Whether a vectorized kernel (AVX-512 VNNI or AVX2) is compiled and runs on this CPU.

    Builds the kernel at the first call; :func:`backend` then names the path.
    """
    return load() in ("avx512-vnni", "avx2")


def paths() -> tuple[str, ...]:
    """The values of ``w4a8_linear``'s ``path`` that run on this CPU (builds the kernel at the first call).

    ``"auto"``, each C++ path the CPU has (slower ones included, for comparisons) and ``"reference"``;
    when the build failed every path runs the reference.
    """
    best = load()
    if best == "torch-reference":
        return _PATHS
    start = ISAS.index("portable" if best == "portable-c++" else best)
    return ("auto", *ISAS[start:], "reference")


def w4a8_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    out_features: int,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    path: str = "auto",
) -> torch.Tensor:
    """``x [..., K]`` times a packed int4 weight (``[N, K]`` as :func:`pack_int4` stores it), plus ``bias``.

    Args:
        x: float32 or bfloat16 activations on the CPU; quantized to int8 per row inside.
        packed: the output of :func:`pack_int4`.
        out_features: ``N``.
        group_size: the group size the weight was packed with.
        bias: optional ``[N]``.
        path: ``"auto"`` (the fastest compiled path), one C++ path by name (``"avx512-vnni"``, ``"avx2"``,
            ``"portable"``; see :func:`paths`; the reference when the build failed) or ``"reference"``
            (torch ops, no build).

    Returns:
        ``[..., N]`` in ``x``'s dtype.

    Raises:
        ValueError: an unknown ``path``.
        RuntimeError: a path this CPU lacks, or shapes that do not match ``packed``.
    """
    if path == "reference":
        return w4a8_linear_reference(x, packed, out_features, group_size, bias)
    if path not in _PATHS:
        raise ValueError(f"path must be one of {', '.join(_PATHS)}, got {path!r}")
    load()
    if path == "auto":
        return W4A8_LINEAR(x, packed, out_features, group_size, bias)
    return W4A8_LINEAR_ON(x, packed, out_features, group_size, bias, path)
