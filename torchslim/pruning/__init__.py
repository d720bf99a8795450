"""Pruning: magnitude/threshold, Wanda, SparseGPT, random, N:M, gradual; masks via parametrize; bake_."""

from torchslim.pruning.gradual import GradualPruning
from torchslim.pruning.parametrize import apply_mask_, bake_, is_masked
from torchslim.pruning.unstructured import (
    MagnitudePruning,
    NMPruning,
    RandomPruning,
    SparseGPTPruning,
    WandaPruning,
)

__all__ = [
    "GradualPruning",
    "MagnitudePruning",
    "NMPruning",
    "RandomPruning",
    "SparseGPTPruning",
    "WandaPruning",
    "apply_mask_",
    "bake_",
    "is_masked",
]
