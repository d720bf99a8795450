"""Network-structure optimization: techniques that make the network itself smaller."""

from torchslim.structured.bn_fold import FoldBatchNorm

__all__ = ["FoldBatchNorm"]
