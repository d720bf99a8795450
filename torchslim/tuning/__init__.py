"""Accuracy-aware tuning: per-layer sensitivity, recipe search under a quality budget, Pareto plots.

Example:
    >>> from torchslim.tuning import OBJECTIVES
    >>> OBJECTIVES
    ('size', 'latency', 'both')
"""

from torchslim.tuning.sensitivity import SensitivityResult, sensitivity
from torchslim.tuning.space import SearchSpace
from torchslim.tuning.tune import OBJECTIVES, TuneResult, tune

__all__ = ["OBJECTIVES", "SearchSpace", "SensitivityResult", "TuneResult", "sensitivity", "tune"]
