"""Pure quantization math: granularities, qparams, quantize / dequantize, grouping.

Affine (uniform) quantization maps a real ``x`` to an integer ``q`` and back (Jacob et al., 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"):

    q = clamp(round(x / s) + z, q_min, q_max)        x̂ = (q − z) · s

Symmetric: ``z = 0``, ``s = max|x| / q_max`` with the restricted range ``[−127, 127]`` (so −x maps to
−q, and int8×int8 products never see −128). Asymmetric: ``s = (max − min) / (q_max − q_min)``,
``z = q_min − round(min / s)``, with the range widened to contain 0 so that 0 is exact (zero padding,
ReLU outputs). The statistics are taken over a *granularity*: the whole tensor, each output channel,
groups of ``g`` consecutive values along the last axis, or each token (row of the last axis).

Scales are never zero or NaN: all-zero or constant data gets ``s = EPS`` (values then quantize to 0 or
to the constant's exact code). Non-finite input raises ``ValueError``; callers name the layer.

Every function is tensor-in, tensor-out and keeps shapes broadcastable (``keepdim``); for
``PerGroup`` the statistics live on the grouped view ``[..., K // g, g]``.

Example:
    >>> import torch
    >>> w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    >>> scale, zp = choose_qparams(w, PerChannel())
    >>> q = quantize(w, scale, zp, PerChannel())
    >>> q
    tensor([[  64, -127],
            [ 127,   64]], dtype=torch.int8)
    >>> torch.equal(dequantize(q, scale, zp, PerChannel())[0], torch.tensor([64 / 127 * 2, -2.0]))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchslim.core.config import Config, fail, register_config

__all__ = [
    "EPS",
    "PER_TENSOR",
    "Granularity",
    "NonFiniteError",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PerToken",
    "amin_amax",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "group_view",
    "qparams_from_minmax",
    "qrange",
    "quantize",
]


class NonFiniteError(ValueError):
    """The data to quantize holds NaN or Inf (callers name the layer)."""


# Smallest scale: finite reciprocal (1e10) in float32, and small enough for any real weight.
EPS = 1e-10


class Granularity(Config):
    """Base of the typed granularity options (``PerTensor()``, ``PerChannel(0)``, ``PerGroup(128)``, ``PerToken()``)."""


@register_config("per-tensor")
@dataclass(frozen=True)
class PerTensor(Granularity):
    """One scale for the whole tensor."""


@register_config("per-channel")
@dataclass(frozen=True)
class PerChannel(Granularity):
    """One scale per index of ``axis`` (0: output channels of a Linear/Conv weight)."""

    axis: int = 0


@register_config("per-group")
@dataclass(frozen=True)
class PerGroup(Granularity):
    """One scale per ``group_size`` consecutive values of the last axis (which it must divide)."""

    group_size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 2:
            fail(self, "group_size", f"must be an integer >= 2 (e.g. 32, 64, 128), got {self.group_size!r}")


@register_config("per-token")
@dataclass(frozen=True)
class PerToken(Granularity):
    """One scale per row of the last axis: each token of an activation ``[..., K]``."""


# Immutable default for arguments (frozen dataclass; a module-level singleton satisfies B008).
PER_TENSOR = PerTensor()


def qrange(bits: int = 8, symmetric: bool = True) -> tuple[int, int]:
    """Integer range: symmetric ``[−(2^(b−1) − 1), 2^(b−1) − 1]``, asymmetric ``[−2^(b−1), 2^(b−1) − 1]``.

    Example:
        >>> qrange(8), qrange(8, symmetric=False), qrange(4)
        ((-127, 127), (-128, 127), (-7, 7))
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    top = 2 ** (bits - 1) - 1
    return (-top if symmetric else -top - 1), top


def group_view(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x`` ``[..., K]`` viewed as ``[..., K // g, g]``: ``g`` consecutive values of the last axis per group.

    Raises:
        ValueError: ``g`` does not divide ``K``.

    Example:
        >>> group_view(torch.arange(8.0).reshape(2, 4), 2).shape
        torch.Size([2, 2, 2])
    """
    if x.shape[-1] % group_size:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of group_size {group_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def _grouped(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``x`` viewed so the statistics reduce over trailing axes: ``[..., K // g, g]`` for PerGroup."""
    return group_view(x, granularity.group_size) if isinstance(granularity, PerGroup) else x


def _reduce_dims(x: torch.Tensor, granularity: Granularity) -> tuple[int, ...]:
    if isinstance(granularity, PerTensor):
        return tuple(range(x.dim()))
    if isinstance(granularity, (PerToken, PerGroup)):
        return (x.dim() - 1,) if x.dim() else ()
    if isinstance(granularity, PerChannel):
        axis = granularity.axis % max(x.dim(), 1)
        return tuple(d for d in range(x.dim()) if d != axis)
    raise TypeError(f"unknown granularity {granularity!r}")


def amin_amax(x: torch.Tensor, granularity: Granularity = PER_TENSOR) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 minimum and maximum of ``x`` over ``granularity`` (keepdim shapes; grouped view for PerGroup).

    Raises:
        ValueError: ``x`` is empty or holds NaN/Inf.

    Example:
        >>> amin_amax(torch.tensor([[1.0, -3.0], [2.0, 4.0]]), PerToken())
        (tensor([[-3.], [ 2.]]), tensor([[1.], [4.]]))
    """
    if x.numel() == 0:
        raise ValueError("cannot choose quantization parameters for an empty tensor")
    xg = _grouped(x.detach(), granularity).float()
    dims = _reduce_dims(xg, granularity)
    mn, mx = torch.aminmax(xg, dim=dims[0], keepdim=True) if len(dims) == 1 else _aminmax_many(xg, dims)
    # min/max propagate NaN and keep ±Inf, so checking the (small) results covers the whole tensor.
    if not (torch.isfinite(mn).all() and torch.isfinite(mx).all()):
        raise NonFiniteError("tensor holds NaN or Inf values")
    return mn, mx


def _aminmax_many(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


def qparams_from_minmax(
    mn: torch.Tensor, mx: torch.Tensor, *, bits: int = 8, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32, ≥ EPS) and zero point (int32) from observed ranges; see the module docstring.

    Example:
        >>> s, z = qparams_from_minmax(torch.tensor(0.0), torch.tensor(0.0))  # all-zero data
        >>> float(s) > 0, int(z)
        (True, 0)
        >>> s, z = qparams_from_minmax(torch.tensor(0.0), torch.tensor(2.55), symmetric=False)
        >>> round(float(s), 4), int(z)
        (0.01, -128)
    """
    qmin, qmax = qrange(bits, symmetric)
    mn = torch.clamp(mn.float(), max=0.0)  # the range always holds 0, so 0 (padding, ReLU) is exact
    mx = torch.clamp(mx.float(), min=0.0)
    if symmetric:
        scale = torch.clamp(torch.maximum(-mn, mx) / qmax, min=EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = torch.clamp((mx - mn) / (qmax - qmin), min=EPS)
    zero_point = torch.clamp(qmin - torch.round(mn / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def choose_qparams(
    x: torch.Tensor, granularity: Granularity = PER_TENSOR, *, bits: int = 8, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max ``(scale, zero_point)`` of ``x`` over ``granularity`` (keepdim shapes).

    Example:
        >>> s, z = choose_qparams(torch.tensor([[1.27, -0.5]]), PerToken())
        >>> s
        tensor([[0.0100]])
    """
    mn, mx = amin_amax(x, granularity)
    return qparams_from_minmax(mn, mx, bits=bits, symmetric=symmetric)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    granularity: Granularity = PER_TENSOR,
    *,
    bits: int = 8,
    symmetric: bool = True,
) -> torch.Tensor:
    """``clamp(round(x / s) + z, q_min, q_max)`` as int8 (round half to even, as torch.round).

    Example:
        >>> quantize(torch.tensor([0.5, 1.5, -300.0]), torch.tensor(1.0))
        tensor([   0,    2, -127], dtype=torch.int8)
    """
    qmin, qmax = qrange(bits, symmetric)
    xg = _grouped(x, granularity).float()
    q = torch.round(xg / scale)
    if zero_point is not None:
        q = q + zero_point
    return torch.clamp(q, qmin, qmax).to(torch.int8).reshape(x.shape)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    granularity: Granularity = PER_TENSOR,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(q − z) · s`` in ``dtype``.

    Example:
        >>> dequantize(torch.tensor([-127, 0, 64], dtype=torch.int8), torch.tensor(0.5))
        tensor([-63.5000,   0.0000,  32.0000])
    """
    qg = _grouped(q, granularity).float()
    if zero_point is not None:
        qg = qg - zero_point
    return (qg * scale).reshape(q.shape).to(dtype)


class _RoundSTE(torch.autograd.Function):
    """round() whose gradient is the identity (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    granularity: Granularity = PER_TENSOR,
    *,
    bits: int = 8,
    symmetric: bool = True,
) -> torch.Tensor:
    """Quantize then dequantize in floating point, differentiable with the straight-through estimator.

    Bengio et al. (2013), "Estimating or Propagating Gradients Through Stochastic Neurons": the forward
    rounds, the backward passes ``∂L/∂x̂`` through unchanged inside the clamp range and as 0 outside
    (``clamp``'s own gradient), which is what quantization-aware training needs.

    Example:
        >>> x = torch.tensor([0.26, 5.0], requires_grad=True)
        >>> y = fake_quantize(x, torch.tensor(0.5), bits=4)  # range [-3.5, 3.5]
        >>> y.detach(), torch.autograd.grad(y.sum(), x)[0]
        (tensor([0.5000, 3.5000]), tensor([1., 0.]))
    """
    qmin, qmax = qrange(bits, symmetric)
    xg = _grouped(x, granularity)
    z = zero_point.to(xg.dtype) if zero_point is not None else 0.0
    q = torch.clamp(_RoundSTE.apply(xg / scale) + z, qmin, qmax)
    return ((q - z) * scale).reshape(x.shape).to(x.dtype)
