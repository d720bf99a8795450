"""Network-structure optimization: techniques that make the network itself smaller.

- :class:`ChannelPruning`: remove conv channels, Linear neurons and attention heads (Torch-Pruning's
  dependency graph; ``nn.MultiheadAttention`` becomes a :class:`PrunedMultiheadAttention`), with a
  :class:`PruningPlan` that replays on a fresh model;
- :class:`LowRank`: truncated-SVD factorization of Linear and Conv2d layers;
- :class:`LayerDropping`: remove whole transformer blocks;
- :class:`FactorizeEmbedding`: an embedding table as a thin table times a projection (truncated SVD);
- :class:`FoldBatchNorm`: fold BatchNorm into the preceding conv / linear layer;
- :func:`preflight` / :func:`unsupported_modules`: what structural pruning cannot handle, before any change.

Every technique records its change with ``record_op``, so ``ts.save`` / ``ts.load`` rebuild the
structure from JSON and the weights from safetensors.
"""

from torchslim.structured.attention import PrunedMultiheadAttention
from torchslim.structured.bn_fold import FoldBatchNorm
from torchslim.structured.channels import ChannelPruning
from torchslim.structured.factorized_embedding import FactorizedEmbedding, FactorizeEmbedding
from torchslim.structured.layer_drop import LayerDropping
from torchslim.structured.lowrank import LowRank, LowRankConv2d, LowRankLinear
from torchslim.structured.plan import PruningPlan
from torchslim.structured.preflight import preflight, unsupported_modules

__all__ = [
    "ChannelPruning",
    "FactorizeEmbedding",
    "FactorizedEmbedding",
    "FoldBatchNorm",
    "LayerDropping",
    "LowRank",
    "LowRankConv2d",
    "LowRankLinear",
    "PrunedMultiheadAttention",
    "PruningPlan",
    "preflight",
    "unsupported_modules",
]
