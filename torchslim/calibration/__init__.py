"""Shared calibration machinery, below every technique: the calibration pass, per-layer input
statistics (Wanda norms, Hessians) and the Hessian inverse that SparseGPT and GPTQ share; under
:func:`distributed_calibration` the batches are split over ranks and the statistics reduced.
:func:`forward_hooks` holds forward (pre-)hooks for one ``with`` block."""

from torchslim.calibration.compensated import CompensatedSum
from torchslim.calibration.distributed import distributed_calibration
from torchslim.calibration.hessian import hessian_from_inputs, inverse_cholesky
from torchslim.calibration.hooks import forward_hooks
from torchslim.calibration.passes import capture_inputs, run_calibration
from torchslim.calibration.stats import InputStats, collect_input_stats, layer_inputs

__all__ = [
    "CompensatedSum",
    "InputStats",
    "capture_inputs",
    "collect_input_stats",
    "distributed_calibration",
    "forward_hooks",
    "hessian_from_inputs",
    "inverse_cholesky",
    "layer_inputs",
    "run_calibration",
]
