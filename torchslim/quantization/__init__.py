"""Quantization and reduced-precision techniques."""

from torchslim.quantization.cast import CastDtype
from torchslim.quantization.common.primitives import PerChannel, PerTensor
from torchslim.quantization.int4.embedding import Int4Embedding
from torchslim.quantization.int4.mixed import MixedPrecision
from torchslim.quantization.int4.modules import Int4WeightOnlyLinear
from torchslim.quantization.int4.w4a8 import Int4W4A8Linear
from torchslim.quantization.int4.weight_only import Int4WeightOnly, float_standin
from torchslim.quantization.int8.dynamic import Int8Dynamic
from torchslim.quantization.int8.modules import Int8DynamicLinear, Int8Embedding, Int8WeightOnlyLinear
from torchslim.quantization.int8.qat import Int8QAT
from torchslim.quantization.int8.static import Int8Static, Int8StaticConv2d, Int8StaticLinear
from torchslim.quantization.int8.weight_only import Int8WeightOnly

__all__ = [
    "CastDtype",
    "Int4Embedding",
    "Int4W4A8Linear",
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
    "PerTensor",
    "float_standin",
]
