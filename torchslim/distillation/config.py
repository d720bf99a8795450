"""``LossTerm`` and ``DistillConfig``: what a distillation run optimises and how, as frozen, validated data.

``DistillConfig`` is also the recipe step ``kind: distill`` (model scope; the teacher comes from
``ctx.teacher``, which ``run_recipe`` fills with a frozen copy of the input model).

Example:
    >>> cfg = DistillConfig(temperature=4.0, alpha=0.7, epochs=2)
    >>> [(t.loss, round(t.weight, 2)) for t in cfg.resolved_terms()]
    [('kd', 0.7), ('ce', 0.3)]
    >>> DistillConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torchslim.core.config import Config, check_fraction, check_positive_int, check_range, fail, register_config
from torchslim.core.search import Choice, searchable
from torchslim.distillation.losses import get_loss
from torchslim.distillation.taps import check_tap_path
from torchslim.errors import ConfigError

__all__ = ["DEFAULT_ALPHA", "DistillConfig", "LossTerm"]

DEFAULT_ALPHA = 0.9


def _check_nonnegative_int(obj: Config, field: str) -> None:
    value = getattr(obj, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        fail(obj, field, f"must be an integer >= 0 (0 turns it off), got {value!r}")


@register_config("loss-term")
@dataclass(frozen=True)
class LossTerm(Config):
    """One weighted loss between a student tap and a teacher tap (or the label).

    Args:
        loss: a registered loss name (``kd``, ``ce``, ``mse``, ``cosine``, ``hidden``, ``attention``,
            ``embedding``; see :func:`~torchslim.distillation.losses.loss_names`).
        weight: the term's weight ``≥ 0`` in the total loss; a zero-weight term is not computed.
        student: tap path on the student (``""``: its output; ``"encoder.layer.1"``; ``"...self[1]"``).
        teacher: tap path on the teacher (ignored by label losses such as ``ce``).

    Raises:
        ConfigError: unknown loss, negative weight, malformed path.

    Example:
        >>> LossTerm("hidden", 0.5, student="encoder.layer.0", teacher="encoder.layer.1").weight
        0.5
    """

    loss: str = "kd"
    weight: float = 1.0
    student: str = ""
    teacher: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str):
            fail(self, "loss", f"expected a loss name, got {self.loss!r}")
        try:
            get_loss(self.loss)
        except ConfigError as e:
            fail(self, "loss", str(e))
        check_range(self, "weight", 0.0, 1e6)
        for field in ("student", "teacher"):
            problem = check_tap_path(getattr(self, field))
            if problem:
                fail(self, field, problem)


@register_config("distill")
@dataclass(frozen=True)
class DistillConfig(Config):
    """Knowledge distillation of a student from a frozen teacher (Hinton et al. 2015 and successors).

    With no ``terms`` the objective is Hinton's: ``alpha · L_KD(T) + (1 − alpha) · CE``. With ``terms``
    it is ``Σ weight_i · loss_i`` over the given terms (``alpha`` must then be left unset).

    Args:
        temperature: softmax temperature ``T > 0`` of the ``kd`` loss.
        alpha: weight of the soft targets in the default objective, in [0, 1]; default 0.9.
        terms: explicit loss terms (feature, hidden-state, attention, embedding distillation).
        epochs: passes over the training data.
        lr: peak AdamW learning rate (linear warm-up, then cosine decay to 0).
        weight_decay: AdamW decoupled weight decay.
        warmup: fraction of the steps spent warming up, in [0, 1).
        clip_norm: gradient-norm clip (0 turns clipping off).
        batch_size: global batch size when the data is a ``Dataset`` (split evenly across DDP processes).
        precision: ``"bf16"`` runs student and teacher forwards under ``torch.autocast`` (losses in fp32).
        eval_every: evaluate every N steps (0: at the end of every epoch) when an eval function is given.
        patience: stop after this many evaluations without improvement, keeping the best weights (0: never).
        checkpoint_every: write a checkpoint every N steps (0: at the end of every epoch) when a
            checkpoint folder is given; an interrupt (Ctrl-C) also checkpoints.
        seed: seeds projections, dropout and the Dataset sampler.

    Raises:
        ConfigError: any field out of range, or ``alpha`` together with ``terms``.

    Example:
        >>> DistillConfig(temperature=0.0)
        Traceback (most recent call last):
        ...
        torchslim.errors.ConfigError: DistillConfig.temperature: must be in (0.0, 100.0], got 0.0
        - temperature: must be in (0.0, 100.0], got 0.0
    """

    # run_recipe gives a recipe with such a step a frozen copy of its input model as the teacher.
    needs_teacher: ClassVar[bool] = True

    temperature: float = 4.0
    alpha: float | None = None
    terms: tuple[LossTerm, ...] = ()
    epochs: int = searchable(3, Choice((30, 20, 8), name="distill_epochs"))
    lr: float = searchable(1e-3, Choice((0.003, 0.002, 0.001), name="distill_lr"))
    weight_decay: float = 1e-4
    warmup: float = 0.05
    clip_norm: float = 1.0
    batch_size: int = 64
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_every: int = 0
    patience: int = 0
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_range(self, "temperature", 0.0, 100.0, low_open=True)
        if self.alpha is not None:
            check_fraction(self, "alpha", allow_one=True, hint="alpha weighs the soft targets: 0.9 means 90% KD")
            if self.terms:
                fail(self, "alpha", "alpha sets the default kd+ce terms; give the weights in terms instead")
        object.__setattr__(self, "terms", tuple(self.terms))
        for i, term in enumerate(self.terms):
            if not isinstance(term, LossTerm):
                fail(self, "terms", f"item {i} must be a LossTerm, got {term!r}")
        if self.terms and not any(t.weight > 0 for t in self.terms):
            fail(self, "terms", "every term has weight 0; give at least one positive weight")
        check_positive_int(self, "epochs")
        check_range(self, "lr", 0.0, 1.0, low_open=True)
        check_range(self, "weight_decay", 0.0, 1.0)
        check_fraction(self, "warmup")
        check_range(self, "clip_norm", 0.0, 1e6, hint="0 turns clipping off")
        check_positive_int(self, "batch_size")
        if self.precision not in ("fp32", "bf16"):
            fail(self, "precision", f"must be 'fp32' or 'bf16', got {self.precision!r}")
        for field in ("eval_every", "patience", "checkpoint_every"):
            _check_nonnegative_int(self, field)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            fail(self, "seed", f"must be an integer, got {self.seed!r}")

    def resolved_terms(self) -> tuple[LossTerm, ...]:
        """The terms in effect: ``terms``, or Hinton's ``kd`` (weight alpha) + ``ce`` (weight 1 − alpha)."""
        if self.terms:
            return self.terms
        alpha = DEFAULT_ALPHA if self.alpha is None else self.alpha
        return (LossTerm("kd", alpha), LossTerm("ce", 1.0 - alpha))
