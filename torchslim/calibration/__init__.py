"""Shared calibration machinery, below every technique: the calibration pass, per-layer input
statistics (Wanda norms, Hessians) and the Hessian inverse that SparseGPT and GPTQ share."""

from torchslim.calibration.hessian import hessian_from_inputs, inverse_cholesky
from torchslim.calibration.passes import capture_inputs, run_calibration
from torchslim.calibration.stats import InputStats, collect_input_stats, layer_inputs

__all__ = [
    "InputStats",
    "capture_inputs",
    "collect_input_stats",
    "hessian_from_inputs",
    "inverse_cholesky",
    "layer_inputs",
    "run_calibration",
]
