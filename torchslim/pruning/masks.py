"""Pure score and mask functions for unstructured and N:M pruning (tensor in, tensor out).

A mask is a bool tensor shaped like the weight: True = keep. Counts are exact: pruning ``s`` of ``n``
elements removes ``round(s * n)`` of them (ties broken by position, deterministically).

Example:
    >>> import torch
    >>> w = torch.tensor([[0.1, -3.0, 0.5, 2.0]])
    >>> topk_mask(magnitude_score(w), 0.5).tolist()
    [[False, True, False, True]]
    >>> nm_mask(magnitude_score(w), n=2, m=4).tolist()
    [[False, True, False, True]]
"""

from __future__ import annotations

import torch


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """|W| (Han et al. 2015, "Learning both Weights and Connections")."""
    return weight.detach().abs().float()


def wanda_score(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al. 2023): S_ij = |W_ij| · ‖X_j‖₂, the weight times the L2 norm of its input feature.

    Args:
        weight: ``[out, in, *kernel]``.
        input_norm: ``[in * prod(kernel)]`` (conv inputs unfolded) or ``[in]``, L2 norms over the
            calibration tokens/patches.
    """
    w = weight.detach().abs().float()
    flat = w.reshape(w.shape[0], -1)
    if input_norm.numel() != flat.shape[1]:
        raise ValueError(f"input_norm has {input_norm.numel()} entries, the weight has {flat.shape[1]} inputs")
    return (flat * input_norm.float().reshape(1, -1)).reshape(w.shape)


def random_score(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores: the baseline every method must beat."""
    return torch.rand(weight.shape, generator=generator)


def n_to_remove(numel: int, sparsity: float) -> int:
    return int(round(sparsity * numel))


def topk_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``numel - round(sparsity·numel)`` highest scores."""
    k = n_to_remove(score.numel(), sparsity)
    mask = torch.ones(score.numel(), dtype=torch.bool)
    if k:
        # stable sort: equal scores are removed in index order, so the result is deterministic
        order = torch.sort(score.reshape(-1), stable=True).indices
        mask[order[:k]] = False
    return mask.reshape(score.shape)


def threshold_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Remove exactly the weights with magnitude strictly below ``threshold``."""
    return weight.detach().abs() >= threshold


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One ranking across all layers: exactly ``round(sparsity·N)`` of the N weights removed in total."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).float() for n in names])
    all_mask = topk_mask(flat, sparsity)
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = all_mask[start : start + size].reshape(scores[n].shape)
        start += size
    return out


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive inputs of an output row, keep the
    ``n`` highest scores (2:4 = NVIDIA's sparse tensor core pattern). Conv weights group along the
    flattened ``in × kernel`` dimension.

    Raises:
        ValueError: the input dimension is not a multiple of ``m``.
    """
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got {n}:{m}")
    flat = score.reshape(score.shape[0], -1)
    if flat.shape[1] % m:
        raise ValueError(f"input dimension {flat.shape[1]} is not a multiple of m={m}")
    groups = flat.reshape(flat.shape[0], -1, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(score.shape)


def cubic_sparsity(step: int, total_steps: int, initial: float, final: float) -> float:
    """Zhu & Gupta 2017 gradual schedule: s_t = s_f + (s_i − s_f)(1 − t/n)³ for t in [0, n]."""
    t = min(max(step, 0), total_steps)
    return final + (initial - final) * (1.0 - t / total_steps) ** 3
