"""Quantization and reduced-precision techniques."""

from torchslim.quantization.cast import CastDtype

__all__ = ["CastDtype"]
