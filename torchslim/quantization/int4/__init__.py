"""Int4 weight-only quantization: group-wise primitives and packing, the RTN / GPTQ / AWQ / HQQ solvers,
the int4 module, and the int4/int8 mixed-precision planner."""
