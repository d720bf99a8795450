"""Quantization and reduced-precision techniques."""

from torchslim.quantization.cast import CastDtype
from torchslim.quantization.dynamic import Int8Dynamic
from torchslim.quantization.int4 import Int4WeightOnly
from torchslim.quantization.int4_mixed import MixedPrecision
from torchslim.quantization.int4_modules import Int4WeightOnlyLinear
from torchslim.quantization.modules import Int8DynamicLinear, Int8Embedding, Int8WeightOnlyLinear
from torchslim.quantization.primitives import PerChannel, PerGroup, PerTensor, PerToken
from torchslim.quantization.qat import Int8QAT
from torchslim.quantization.static import Int8Static, Int8StaticConv2d, Int8StaticLinear
from torchslim.quantization.weight_only import Int8WeightOnly

__all__ = [
    "CastDtype",
    "Int4WeightOnly",
    "Int4WeightOnlyLinear",
    "Int8Dynamic",
    "Int8DynamicLinear",
    "Int8Embedding",
    "Int8QAT",
    "Int8Static",
    "Int8StaticConv2d",
    "Int8StaticLinear",
    "Int8WeightOnly",
    "Int8WeightOnlyLinear",
    "MixedPrecision",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PerToken",
]
