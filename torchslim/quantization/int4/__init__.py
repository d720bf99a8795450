"""Int4 weight-only quantization: group-wise primitives and packing, the RTN / GPTQ / AWQ / HQQ solvers,
the int4 modules (linear and embedding rows), and the int4/int8 mixed-precision planner."""

from torchslim.quantization.int4.embedding import Int4Embedding

__all__ = ["Int4Embedding"]
