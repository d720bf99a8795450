"""Accuracy-aware tuning: per-layer sensitivity, recipe search under a quality budget, Pareto plots.

Example:
    >>> from torchslim.tuning import OBJECTIVES
    >>> OBJECTIVES
    ('size', 'latency', 'both')
"""

from torchslim.tuning.options import OBJECTIVES, TuneOptions
from torchslim.tuning.sensitivity import SensitivityResult, sensitivity
from torchslim.tuning.space import SearchSpace
from torchslim.tuning.tune import TuneResult, tune

__all__ = ["OBJECTIVES", "SearchSpace", "SensitivityResult", "TuneOptions", "TuneResult", "sensitivity", "tune"]
