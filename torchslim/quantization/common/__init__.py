"""What every quantization family shares: affine primitives and granularities, observers, SQNR,
SmoothQuant factors, and the module swap that records each swap for ``ts.load``."""
