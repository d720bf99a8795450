"""Distillation losses: pure tensor-in/tensor-out functions, registered by name for ``LossTerm``.

Every loss returns a scalar (mean over the batch). The registry maps a name used in configs and
recipes (``"kd"``, ``"ce"``, ``"mse"``, ``"cosine"``, ``"hidden"``, ``"attention"``, ``"embedding"``)
to a :class:`LossSpec` saying what the student output is compared with (the teacher's output or the
label) and whether a learned projection may bridge different widths.

Example:
    >>> import torch
    >>> s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]])
    >>> float(kd_loss(s, t, temperature=4.0))
    0.0
    >>> {"kd", "ce", "mse", "cosine", "hidden", "attention", "embedding"} <= set(loss_names())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from torchslim.errors import ConfigError, RegistryError

__all__ = [
    "LossSpec",
    "attention_loss",
    "ce_loss",
    "cosine_loss",
    "embedding_loss",
    "get_loss",
    "hidden_state_loss",
    "kd_loss",
    "loss_names",
    "mse_loss",
    "register_loss",
]


def _up(x: torch.Tensor) -> torch.Tensor:
    """Compute losses in at least fp32: bf16/fp16 features (autocast) are upcast, fp64 is kept."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}; "
            "tap layers of matching shape, or use a loss with a projection (mse, cosine, hidden, embedding)"
        )


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft-target distillation loss of Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network").

    ``L_KD = T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))``, averaged over predictions. The ``T²``
    keeps the gradient scale independent of ``T`` (the soft-target gradients scale as ``1/T²``).

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits, same shape.
        temperature: ``T > 0``; higher values soften both distributions.

    Returns:
        A scalar: the mean over every leading position (batch, and tokens if any).

    Raises:
        ValueError: different shapes or ``temperature <= 0``.

    Example:
        >>> import torch
        >>> # uniform student vs a confident teacher: KL ≈ log 2
        >>> round(float(kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 10.0]]))), 4)
        0.6926
    """
    _check_same_shape(student_logits, teacher_logits, "kd")
    if not temperature > 0:
        raise ValueError(f"kd: temperature must be > 0, got {temperature}")
    c = student_logits.shape[-1]
    log_p_s = F.log_softmax(_up(student_logits).reshape(-1, c) / temperature, dim=-1)  # [N, C]
    log_p_t = F.log_softmax(_up(teacher_logits).reshape(-1, c) / temperature, dim=-1)  # [N, C]
    # batchmean: KL summed over classes, averaged over the N predictions (the true KL per prediction).
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def ce_loss(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels: ``-mean(log softmax(z_s)[y])``.

    Args:
        student_logits: ``[..., C]`` logits.
        target: ``[...]`` integer class ids (``-100`` is ignored, as in ``F.cross_entropy``).

    Example:
        >>> import torch
        >>> round(float(ce_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))), 4)
        0.6931
    """
    c = student_logits.shape[-1]
    return F.cross_entropy(_up(student_logits).reshape(-1, c), target.reshape(-1))


def mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error on features, the "hint" loss of FitNets (Romero et al. 2015): ``mean((f_s − f_t)²)``.

    Example:
        >>> import torch
        >>> float(mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])))
        5.0
    """
    _check_same_shape(student, teacher, "mse")
    return F.mse_loss(_up(student), _up(teacher))


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cosine distance on the last axis: ``mean(1 − cos(f_s, f_t))`` (direction only, scale-free).

    Used e.g. by DistilBERT (Sanh et al. 2019) to align hidden-state directions.

    Example:
        >>> import torch
        >>> float(cosine_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])))
        1.0
    """
    _check_same_shape(student, teacher, "cosine")
    return (1.0 - F.cosine_similarity(_up(student), _up(teacher), dim=-1, eps=1e-8)).mean()


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Hidden-state distillation of TinyBERT (Jiao et al. 2020, eq. 8): ``L_hidn = MSE(H_s W_h, H_t)``.

    ``student`` is ``H_s W_h`` (the trainer applies the learned projection ``W_h`` when the widths
    differ), ``teacher`` is ``H_t``; both ``[B, L, d]``. The mean runs over batch, tokens and width.

    Example:
        >>> import torch
        >>> float(hidden_state_loss(torch.ones(1, 2, 2), torch.zeros(1, 2, 2)))
        1.0
    """
    _check_same_shape(student, teacher, "hidden")
    return F.mse_loss(_up(student), _up(teacher))


def attention_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Self-attention distribution transfer of MiniLM (Wang et al. 2020, eq. 6).

    ``L_AT = 1/(A_h·|x|) Σ_a Σ_t KL(A_t[a, t] ‖ A_s[a, t])``: the KL divergence between the teacher's
    and the student's attention distributions of every head ``a`` and query position ``t``, averaged
    over heads, queries and the batch. (TinyBERT instead takes an MSE on the unnormalised scores; the
    KL form needs no projection and ignores the score scale.)

    Args:
        student_probs: ``[B, H, L, L]`` attention probabilities (rows sum to 1), e.g. the second
            output of a Hugging Face self-attention module with ``attn_implementation="eager"``.
        teacher_probs: the teacher's, same shape (same number of heads).
        eps: floor on the student probabilities inside the log (masked keys have probability 0).

    Example:
        >>> import torch
        >>> t = torch.tensor([[[[0.5, 0.5]]]])
        >>> round(float(attention_loss(torch.tensor([[[[0.9, 0.1]]]]), t)), 4)
        0.5108
    """
    _check_same_shape(student_probs, teacher_probs, "attention")
    s, t = _up(student_probs), _up(teacher_probs)
    # xlogy: 0·log 0 = 0 for masked keys whose teacher probability is exactly 0.
    kl = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(eps))).sum(dim=-1)  # [B, H, L]
    return kl.mean()


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sentence-embedding distillation (Reimers & Gurevych 2020): ``mean_i ‖e_s(x_i) − e_t(x_i)‖² / d``.

    The student learns to reproduce the teacher's sentence embeddings on unlabeled text, so no labels
    are needed. Both embeddings are ``[B, d]`` (pooled, as the encoder returns them; mean over the batch
    and the width, i.e. ``F.mse_loss``).

    Raises:
        ValueError: the embeddings are not 2-D or differ in shape.

    Example:
        >>> import torch
        >>> float(embedding_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])))
        0.5
    """
    if student.dim() != 2:
        raise ValueError(
            f"embedding: expected pooled [B, d] embeddings, got shape {tuple(student.shape)}; "
            "tap the pooled output, or use 'hidden' for per-token states"
        )
    _check_same_shape(student, teacher, "embedding")
    return F.mse_loss(_up(student), _up(teacher))


# ---------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
        name: the name used in ``LossTerm(loss=...)`` and recipes.
        fn: the pure loss ``fn(student, reference[, temperature]) -> scalar``.
        reference: ``"teacher"`` (the teacher's tapped output) or ``"target"`` (the batch's labels).
        temperature: whether ``fn`` takes the config's ``temperature``.
        projectable: whether a learned projection may map the student's width to the teacher's.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    reference: Literal["teacher", "target"] = "teacher"
    temperature: bool = False
    projectable: bool = False

    def __call__(self, student: torch.Tensor, reference: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        if self.temperature:
            return self.fn(student, reference, temperature=temperature)
        return self.fn(student, reference)


_LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str,
    *,
    reference: Literal["teacher", "target"] = "teacher",
    temperature: bool = False,
    projectable: bool = False,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register a pure loss under ``name`` (unique) for use in ``LossTerm(loss=name)``.

    Raises:
        RegistryError: ``name`` is already taken or ``reference`` is invalid.

    Example:
        >>> @register_loss("example-l1")
        ... def l1(student, teacher):
        ...     return (student - teacher).abs().mean()
        >>> get_loss("example-l1").reference
        'teacher'
    """
    if reference not in ("teacher", "target"):
        raise RegistryError(f"reference must be 'teacher' or 'target', got {reference!r}")

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _LOSSES and _LOSSES[name].fn is not fn:
            raise RegistryError(f"distillation loss {name!r} is already registered")
        _LOSSES[name] = LossSpec(name, fn, reference, temperature, projectable)
        return fn

    return deco


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).

    Example:
        >>> get_loss("kd").temperature
        True
    """
    try:
        return _LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown distillation loss {name!r}; registered: {', '.join(sorted(_LOSSES))}") from None


def loss_names() -> list[str]:
    """The registered loss names."""
    return list(_LOSSES)


register_loss("kd", temperature=True)(kd_loss)
register_loss("ce", reference="target")(ce_loss)
register_loss("mse", projectable=True)(mse_loss)
register_loss("cosine", projectable=True)(cosine_loss)
register_loss("hidden", projectable=True)(hidden_state_loss)
register_loss("attention")(attention_loss)
register_loss("embedding", projectable=True)(embedding_loss)
