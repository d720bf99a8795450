"""What the int4 linear modules share: shape and group checks, the ``bias`` / ``input_scale`` buffers,
the spec, the round-to-nearest construction from ``nn.Linear`` and the input-scale fold.

:class:`~torchslim.quantization.int4.modules.Int4WeightOnlyLinear` (W4A16, torch's int4 kernels) and
:class:`~torchslim.quantization.int4.w4a8.Int4W4A8Linear` (W4A8 kernel layout) differ only in how the
codes are stored and multiplied; each subclass registers its own weight buffers and implements
:meth:`Int4LinearBase._dequantized_codes` and ``forward``.

Example:
    >>> import torch, torch.nn as nn
    >>> t = rtn_of_linear(nn.Linear(64, 8), 32)
    >>> t.q.shape, t.scale.shape
    (torch.Size([8, 64]), torch.Size([8, 2]))
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn as nn

from torchslim.quantization.common.primitives import NonFiniteError
from torchslim.quantization.int4.primitives import Int4Tensors, check_group_size
from torchslim.quantization.int4.rtn import rtn_quantize

__all__ = ["Int4LinearBase", "rtn_of_linear"]

_M = TypeVar("_M", bound="Int4LinearBase")


def rtn_of_linear(linear: nn.Linear, group_size: int) -> Int4Tensors:
    """Round-to-nearest int4 codes and parameters of ``linear.weight`` (float32 math).

    Raises:
        NonFiniteError: the weight holds NaN or Inf.
        ValueError: bad group size for ``linear.in_features``.
    """
    w = linear.weight.detach()
    if not bool(torch.isfinite(w).all()):
        raise NonFiniteError("weight contains NaN or Inf")
    problem = check_group_size(linear.in_features, group_size)
    if problem:
        raise ValueError(problem)
    return rtn_quantize(w.float(), group_size)


class Int4LinearBase(nn.Module):
    """Base of the int4 linear modules: ``ŵ = (q − 8) · scale + zero`` per (row, group), optional bias and
    AWQ input scale. Subclasses implement :meth:`_register_weights` and :meth:`_store_codes` (their own
    weight buffers), :meth:`_dequantized_codes` and ``forward``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        group_size: input columns per (scale, zero) group: 32, 64, 128 or 256, dividing ``in_features``.
        input_scale: keep a ``[K]`` buffer that multiplies the input (AWQ).
        device: where the buffers are made.

    Raises:
        ValueError: a group size that is not allowed or does not divide ``in_features``.
    """

    torchslim_compressed = True
    bias: torch.Tensor | None
    input_scale: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        group_size: int = 128,
        input_scale: bool = False,
        device: Any = None,
    ) -> None:
        super().__init__()
        problem = check_group_size(in_features, group_size)
        if problem:
            raise ValueError(problem)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self._register_weights(device)  # first: the state_dict order is weights, bias, input_scale
        # The ``bias`` ``[N]`` and ``input_scale`` ``[K]`` float32 buffers (``None`` when off).
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features, device=device) if input_scale else None)

    def _register_weights(self, device: Any) -> None:
        """Register the subclass's (empty) weight buffers on ``device``."""
        raise NotImplementedError

    def _store_codes(self, t: Int4Tensors) -> None:
        """Fill the weight buffers from the codes/parameters ``t`` (shaped as this module)."""
        raise NotImplementedError

    @classmethod
    def _empty_for(
        cls,
        t: Int4Tensors,
        group_size: int,
        bias: torch.Tensor | None,
        input_scale: torch.Tensor | None,
        **options: Any,
    ) -> Any:
        """An empty module shaped for the codes ``t``, on their device, with ``bias`` / ``input_scale``
        buffers where those tensors are given (``options``: the subclass's own constructor arguments)."""
        n, k = t.q.shape
        return cls(
            k, n, bias is not None, group_size=group_size, input_scale=input_scale is not None, device=t.q.device,
            **options,
        )  # fmt: skip

    def _copy_extras(self, bias: torch.Tensor | None, input_scale: torch.Tensor | None) -> None:
        """Fill ``bias`` / ``input_scale`` from tensors (as float32) where both sides have them."""
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias.detach().float())
        if input_scale is not None and self.input_scale is not None:
            self.input_scale.copy_(input_scale.detach().float())

    @classmethod
    def from_tensors(
        cls: type[_M],
        t: Int4Tensors,
        group_size: int,
        bias: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
        **options: Any,
    ) -> _M:
        """A module holding the codes/parameters ``t`` (from any of the int4 algorithms: RTN, GPTQ, AWQ, HQQ);
        ``options``: the subclass's own constructor arguments (``kernel`` of ``Int4WeightOnlyLinear``).

        Example:
            >>> from torchslim.quantization.int4.modules import Int4WeightOnlyLinear
            >>> from torchslim.quantization.int4.w4a8 import Int4W4A8Linear
            >>> t = rtn_quantize(torch.randn(16, 64), 32)
            >>> Int4W4A8Linear.from_tensors(t, 32)
            Int4W4A8Linear(in_features=64, out_features=16, bias=False, group_size=32)
            >>> Int4WeightOnlyLinear.from_tensors(t, 32, kernel=False).kernel
            False
        """
        mod = cls._empty_for(t, group_size, bias, input_scale, **options)
        mod._store_codes(t)
        mod._copy_extras(bias, input_scale)
        return mod

    @classmethod
    def from_float(cls: type[_M], linear: nn.Linear, group_size: int = 128, **options: Any) -> _M:
        """Round-to-nearest int4 of ``linear`` (the ``Int4WeightOnly`` config runs GPTQ / AWQ / HQQ);
        ``options``: as :meth:`from_tensors`.

        Raises:
            NonFiniteError: the weight holds NaN or Inf.
            ValueError: bad group size for ``linear.in_features``.
        """
        return cls.from_tensors(rtn_of_linear(linear, group_size), group_size, linear.bias, **options)

    # ------------------------------------------------------------------ spec (structure replay)

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments for :func:`~torchslim.core.modspec.module_from_spec` (structure replay)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "group_size": self.group_size,
            "input_scale": self.input_scale is not None,
        }

    @classmethod
    def _spec_options(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments a subclass adds to the common ones in :meth:`from_spec`."""
        return {}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Any:
        """An empty module from :meth:`torchslim_spec`'s output (values are validated, never executed)."""
        return cls(
            int(spec["in_features"]),
            int(spec["out_features"]),
            bool(spec["bias"]),
            group_size=int(spec["group_size"]),
            input_scale=bool(spec.get("input_scale", False)),
            **cls._spec_options(spec),
        )

    # ------------------------------------------------------------------ compute

    def _dequantized_codes(self) -> torch.Tensor:
        """The stored weight ``[N, K]`` in float32, without ``input_scale``."""
        raise NotImplementedError

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight ``[N, K]`` this module computes with (``input_scale`` folded in)."""
        w = self._dequantized_codes()  # a fresh tensor: scaled in place, no second weight-sized copy
        if self.input_scale is not None:
            w.mul_(self.input_scale.float())
        return w.to(dtype)

    def _scaled_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[M, K]`` rows, multiplied by ``input_scale`` when there is one."""
        x2 = x.reshape(-1, x.shape[-1])
        scale = self._buffers["input_scale"]  # direct read: runs once per layer per decoded token
        return x2 * scale.to(x.dtype) if scale is not None else x2

    def logical_params(self) -> int:
        """Weight elements this module stands for (``N·K`` codes + bias), for parameter counts."""
        return self.out_features * self.in_features + (self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        extra = ", input_scale=True" if self.input_scale is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"group_size={self.group_size}{extra}"
        )
