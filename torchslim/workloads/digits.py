"""The ``digits`` workload: a small CNN on scikit-learn's 8x8 handwritten digits, trained here on first use.

The data ships with scikit-learn (1797 images, 10 classes), so the workload is fully offline. The
teacher is trained on first use and cached as safetensors under ``cache_dir()/digits``.

Example:
    >>> wl = DigitsWorkload()
    >>> {k: v.shape for k, v in wl.splits().items() if k.endswith("_x")}["test_x"]
    torch.Size([360, 1, 8, 8])
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.training import fit_
from torchslim.workloads.base import ShuffledBatches, Workload, cache_dir, cached_or_trained

__all__ = [
    "DigitsCNN",
    "DigitsStudent",
    "DigitsWorkload",
    "build_student",
    "build_teacher",
    "example_inputs",
    "load_splits",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Bump when the data pipeline or training recipe changes in a way the hash below cannot see.
_RECIPE_VERSION = 1
# Teacher training recipe (part of the cache key).
_TEACHER_EPOCHS = 40
_TEACHER_LR = 3e-3
_TEACHER_SEED = 0
# The teacher trains on this many intra-op threads whatever the caller's setting: the thread count splits the
# float reductions differently, so teachers trained on 1 and on 2 threads differ, and every digits figure with
# them. Fixed, the cached weights are a function of the recipe alone, not of which process trained them first.
_TEACHER_THREADS = 2
_BATCH = 64


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU blocks, global average pooling and a linear classifier for ``[B, 1, 8, 8]`` inputs.

    Built from plain modules only (no functional reshapes, no in-place ops) so torch.fx and
    Torch-Pruning can trace it and remove channels.

    Args:
        widths: output channels of each 3x3 conv block.
        num_classes: size of the classifier output.
        pool_after: indexes of the blocks followed by a 2x2 max-pool; default: every block but the last.

    Example:
        >>> import torch
        >>> DigitsCNN(widths=(8, 16))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        num_classes: int = 10,
        pool_after: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        pools = set(range(len(widths) - 1)) if pool_after is None else set(pool_after)
        layers: list[nn.Module] = []
        in_ch = 1
        for i, width in enumerate(widths):
            # bias=False: BatchNorm's shift makes a conv bias redundant.
            layers += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i in pools:
                layers.append(nn.MaxPool2d(2))
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``x`` of shape ``[B, 1, 8, 8]``."""
        return self.classifier(self.flatten(self.pool(self.features(x))))


class DigitsStudent(DigitsCNN):
    """The small student: the same blocks as :class:`DigitsCNN` with narrow widths (8 → 16).

    Example:
        >>> sum(p.numel() for p in DigitsStudent().parameters()) < 2000
        True
    """

    def __init__(self, widths: Sequence[int] = (8, 16), num_classes: int = 10) -> None:
        super().__init__(widths=widths, num_classes=num_classes)


def build_teacher() -> nn.Module:
    """A freshly initialised (untrained) teacher; usable as ``--model torchslim.workloads.digits:build_teacher``.

    Example:
        >>> type(build_teacher()).__name__
        'DigitsCNN'
    """
    return DigitsCNN()


def build_student() -> nn.Module:
    """A freshly initialised (untrained) student.

    Example:
        >>> type(build_student()).__name__
        'DigitsStudent'
    """
    return DigitsStudent()


@functools.lru_cache(maxsize=1)
def load_splits() -> dict[str, torch.Tensor]:
    """The fixed, stratified 60/20/20 split as tensors ``{split}_x`` ``[N, 1, 8, 8]`` in [0, 1] and ``{split}_y``.

    Cached per process; callers must not modify the returned tensors in place.

    Example:
        >>> s = load_splits()
        >>> s["train_x"].shape[0] + s["val_x"].shape[0] + s["test_x"].shape[0]
        1797
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[:, None]  # [N, 1, 8, 8]; pixel values are 0..16
    y = data.target.astype("int64")
    idx = list(range(len(y)))
    rest, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    train, val = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=0)
    out: dict[str, torch.Tensor] = {}
    for name, ids in zip(SPLITS, (train, val, test), strict=True):
        out[f"{name}_x"] = torch.from_numpy(x[ids]).contiguous()
        out[f"{name}_y"] = torch.from_numpy(y[ids]).contiguous()
    return out


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image in ``x`` ``[B, 1, H, W]`` by a random -1/0/+1 pixel in each axis (zero fill)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))  # [B, 1, H+2, W+2]
    dy = torch.randint(0, 3, (b,), generator=generator)
    dx = torch.randint(0, 3, (b,), generator=generator)
    rows = (torch.arange(h)[None] + dy[:, None])[:, :, None]  # [B, H, 1]
    cols = (torch.arange(w)[None] + dx[:, None])[:, None, :]  # [B, 1, W]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]  # [B, 1, H, W]


def example_inputs() -> tuple[torch.Tensor]:
    """A fixed batch of 64 real test images ``([64, 1, 8, 8],)`` for tracing, MACs and latency.

    Example:
        >>> example_inputs()[0].shape
        torch.Size([64, 1, 8, 8])
    """
    return (load_splits()["test_x"][:64].clone(),)


def _seeded_teacher(seed: int = _TEACHER_SEED) -> nn.Module:
    """``build_teacher()`` initialised from ``seed`` in a forked RNG (the caller's global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_teacher()


def _arch_key() -> str:
    """Short hash of the teacher architecture and training recipe: a change invalidates the cache."""
    spec = (
        f"{_seeded_teacher()!r}|v{_RECIPE_VERSION}|e{_TEACHER_EPOCHS}|lr{_TEACHER_LR}|s{_TEACHER_SEED}"
        f"|t{_TEACHER_THREADS}"
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


class DigitsWorkload(Workload):
    """scikit-learn digits: a CNN teacher trained here (cached), top-1 accuracy in [0, 1].

    Example:
        >>> wl = DigitsWorkload()
        >>> wl.name, wl.metric, wl.higher_is_better
        ('digits', 'accuracy', True)
    """

    name = "digits"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self) -> None:
        self._teacher_state: dict[str, torch.Tensor] | None = None

    # -- data -------------------------------------------------------------------------------------

    def splits(self) -> dict[str, torch.Tensor]:
        """The cached split tensors (see :func:`load_splits`)."""
        return load_splits()

    def train_data(self, *, augment: bool = False, seed: int = 0) -> Callable[[], Iterable[tuple]]:
        """A callable giving one shuffled pass of ``(x [64, 1, 8, 8], y [64])`` train batches per call.

        The k-th call (k = 0, 1, ...) shuffles with seed ``seed + k``: epochs differ, runs repeat.

        Args:
            augment: randomly shift each image by up to one pixel (seeded like the shuffle).
            seed: seed of the first pass.

        Example:
            >>> data = DigitsWorkload().train_data()
            >>> x, y = next(iter(data()))
            >>> x.shape, y.shape
            (torch.Size([64, 1, 8, 8]), torch.Size([64]))
        """
        s = load_splits()
        calls = iter(range(seed, seed + 2**62))

        def make() -> ShuffledBatches:
            return ShuffledBatches(s["train_x"], s["train_y"], _BATCH, next(calls), _shift if augment else None)

        return make

    def calibration(self, n_batches: int = 8) -> list[tuple[torch.Tensor]]:
        """The first ``n_batches`` batches of 32 train images (fixed order), each a 1-tuple ``(x,)``.

        Example:
            >>> [b[0].shape[0] for b in DigitsWorkload().calibration(2)]
            [32, 32]
        """
        x = load_splits()["train_x"]
        return [(x[i * 32 : (i + 1) * 32].clone(),) for i in range(n_batches) if i * 32 < len(x)]

    def example_inputs(self) -> tuple[torch.Tensor]:
        """A fixed batch of 64 test images (see :func:`example_inputs`)."""
        return example_inputs()

    # -- model ------------------------------------------------------------------------------------

    def factory(self) -> nn.Module:
        """An untrained teacher (same architecture as :meth:`model`)."""
        return build_teacher()

    def cache_path(self) -> Path:
        """Where the trained teacher's weights are cached."""
        return cache_dir() / "digits" / f"teacher-{_arch_key()}.safetensors"

    def _load_or_train(self) -> dict[str, torch.Tensor]:
        # Seeded initialisation too: the cached weights are then a pure function of the recipe.
        def train() -> nn.Module:
            return fit_(
                _seeded_teacher(),
                self.train_data(augment=True, seed=_TEACHER_SEED),
                epochs=_TEACHER_EPOCHS,
                lr=_TEACHER_LR,
                seed=_TEACHER_SEED,
                desc="digits teacher",
            )

        return cached_or_trained(self.cache_path(), _seeded_teacher, train, "digits teacher", threads=_TEACHER_THREADS)

    def model(self) -> nn.Module:
        """The trained teacher in eval mode; a fresh copy each call, so in-place compression is safe.

        Trains and caches on first use.

        Example:
            >>> m = DigitsWorkload().model()
            >>> m.training
            False
        """
        if self._teacher_state is None:
            self._teacher_state = self._load_or_train()
        model = _seeded_teacher()
        model.load_state_dict(self._teacher_state, strict=True)
        return model.eval()

    # -- quality ----------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """Top-1 accuracy of ``model`` on ``split`` (``"train"``, ``"val"`` or ``"test"``), in [0, 1].

        Runs under ``torch.inference_mode`` in eval mode and restores the model's previous mode.
        Inputs are cast to the dtype and device of the model's first floating parameter, so bf16
        models work unchanged.

        Args:
            model: maps ``[B, 1, 8, 8]`` images to ``[B, 10]`` logits.
            split: which split to score.

        Returns:
            ``{"accuracy": fraction correct}``.

        Raises:
            ValueError: for an unknown split.

        Example:
            >>> round(DigitsWorkload().evaluate(build_teacher())["accuracy"], 1) < 0.5
            True
        """
        return {"accuracy": float(self.example_scores(model, split).double().mean())}

    def example_scores(self, model: nn.Module, split: str = "test") -> torch.Tensor:
        """Per-image correctness (1.0 / 0.0) of ``model`` on ``split``: its mean is ``evaluate``'s accuracy.

        ``torchslim tune`` uses it for the standard error of a drop (see :mod:`torchslim.tuning.budget`).

        Example:
            >>> DigitsWorkload().example_scores(build_teacher(), "val").shape
            torch.Size([360])
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        s = load_splits()
        x_all, y_all = s[f"{split}_x"], s[f"{split}_y"]
        ref = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        hits = []
        try:
            with torch.inference_mode():
                for start in range(0, len(y_all), 256):
                    x = x_all[start : start + 256].to(device=device, dtype=dtype)
                    hits.append(model(x).argmax(dim=-1).cpu() == y_all[start : start + 256])
        finally:
            model.train(was_training)
        return torch.cat(hits).float()
