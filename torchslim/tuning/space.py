"""The search space of ``torchslim tune``: recipe parameters in, a validated :class:`Recipe` out.

A point of the space is a flat dict of plain values (what Optuna stores per trial), e.g.::

    {"drop_layers": 0, "prune": "channels", "channel_ratio": 0.8125, "channel_round_to": 1,
     "recovery": "distill", "distill_epochs": 30, "distill_lr": 0.003,
     "quant": "int8", "int8_method": "int8-static", "bits:features.0": 8, "bits:classifier": 32}

:meth:`SearchSpace.recipe` turns it into recipe data (``recipe_from_dict``), ordered
*drop layers → prune → recover (fine-tune or distil) → fold BatchNorm → quantize*, so the best point is
written as YAML that ``torchslim compress --recipe FILE`` runs. Which dimensions exist depends on the
model (:func:`describe_model`): layer dropping only with a stack of repeated blocks, recovery only
when the workload has training data, ``int8-static`` for CNNs, int4 only when
``torchslim.quantization.Int4WeightOnly`` exists.

Layer groups ("bit width per group"): every Linear/Conv2d, with the index of a repeated block
replaced by ``*`` (``encoder.layer.3.attention.self.query`` → ``encoder.layer.*.attention.self.query``),
so a transformer has one group per projection kind and a small CNN one group per layer. A point with
every group at the same bit width quantizes without a selection (the technique's own default, as the
built-in recipes do: ``int8-dynamic`` then also stores embeddings in int8).

Embedding tables (``embeddings``, only for models with ``nn.Embedding``): ``fp32`` or ``int8`` in a point
that quantizes. Int4 covers Linear layers only, so an int4 (or mixed-width) point with ``int8`` embeddings
adds an ``int8-weight-only`` step selected on ``Embedding`` modules; a uniform int8 point with ``fp32``
embeddings sets the technique's ``embeddings: false``. All-MiniLM-L6-v2 keeps 47 of its 90 MB in
embeddings: int4 Linear layers with int8 embeddings are smaller than any uniform int8 recipe.

A workload can shape its default space: ``tune`` passes its ``tune_space_overrides()`` to
:meth:`SearchSpace.for_model` (``minilm-stsb`` keeps to post-training techniques, about a minute a trial on CPU).

The grids hold the built-in recipes' values (channel ratios in steps of 1/32: 0.5 of ``default``,
0.8125 of ``kws-tiny``; their distillation epochs and learning rates), so :meth:`SearchSpace.anchors`
can start a study from every built-in recipe the space expresses (see :mod:`torchslim.tuning.moves`).

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    >>> space = SearchSpace.for_model(model, has_train_data=True)
    >>> space.groups
    ('0', '3')
    >>> params = {"prune": "magnitude", "sparsity": 0.5, "recovery": "none", "quant": "int8",
    ...           "int8_method": "int8-static", "bits:0": 8, "bits:3": 32}
    >>> recipe = space.recipe(params, name="demo")
    >>> [s.config.kind for s in recipe.steps]
    ['magnitude-pruning', 'int8-static']
    >>> recipe.steps[1].select.include
    ('^0$',)
    >>> space.recipe(params | {"bits:3": 8}).steps[1].select is None  # every group at 8 bits
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from torchslim.core.search import Count, Grid, search_dims
from torchslim.errors import ConfigError
from torchslim.recipes import Recipe, recipe_from_dict
from torchslim.tuning.groups import group_key, group_regex
from torchslim.tuning.techniques import (
    INT8,
    PRUNERS,
    CastDtype,
    ChannelPruning,
    Distill,
    FineTune,
    FoldBatchNorm,
    GradualPruning,
    Int4WeightOnly,
    Int8WeightOnly,
    LayerDropping,
    MagnitudePruning,
    build,
    step_data,
)

__all__ = ["EMBEDDINGS", "SearchSpace", "describe_model", "group_key", "int4_config_type"]

PRUNE_METHODS = ("none", "magnitude", "wanda", "channels")
RECOVERY = ("none", "finetune", "distill")
EMBEDDINGS = ("fp32", "int8")
# Sparsity on top of channel pruning (Deep Compression's order: structure, then thinning, then int8).
CHANNEL_SPARSITY = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)
_LAYER_TYPES = (nn.Linear, nn.Conv2d)
# A declared dimension (by its name in a point) -> the SearchSpace field holding its values in this
# space: a (low, high, step) range for a Grid, the choices for a Choice, the upper bound for a Count.
SPACE_FIELDS = {
    "drop_layers": "max_drop_layers",
    "channel_ratio": "channel_ratio",
    "channel_round_to": "channel_round_to",
    "sparsity": "sparsity",
    "distill_epochs": "distill_epochs",
    "distill_lr": "distill_lr",
    "int4_group_size": "int4_group_sizes",
    "int4_method": "int4_methods",
}
_CHANNELS = search_dims(ChannelPruning)
_DISTILL = search_dims(Distill)
_INT4 = search_dims(Int4WeightOnly)


def int4_config_type() -> type | None:
    """``torchslim.quantization.Int4WeightOnly`` when that technique is installed, else None.

    Example:
        >>> int4_config_type() is None or int4_config_type().kind.startswith("int4")
        True
    """
    import torchslim.quantization as q

    return getattr(q, "Int4WeightOnly", None)


def describe_model(model: nn.Module) -> dict[str, Any]:
    """What the space needs to know: layer groups (with their module types), BatchNorm, repeated blocks.

    Example:
        >>> d = describe_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
        >>> d["groups"], d["has_conv"], d["has_bn"], d["has_embedding"], d["blocks"]
        ({'0': ['Conv2d']}, True, True, False, 0)
    """
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, _LAYER_TYPES) and name:
            kinds = groups.setdefault(group_key(name), [])
            if type(module).__name__ not in kinds:
                kinds.append(type(module).__name__)
    blocks = 0
    try:
        from torchslim.structured.layer_drop import find_blocks

        blocks = len(find_blocks(model)[1])
    except Exception:  # noqa: BLE001 - no stack of repeated blocks: layer dropping is left out of the space
        blocks = 0
    return {
        "groups": groups,
        "has_conv": any(isinstance(m, nn.Conv2d) for m in model.modules()),
        "has_bn": any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        "has_embedding": any(isinstance(m, nn.Embedding) for m in model.modules()),
        "blocks": blocks,
    }


@dataclass(frozen=True)
class SearchSpace:
    """Dimensions of the search and how a point becomes a recipe.

    The numeric dimensions are those the techniques' configs declare on their fields
    (:mod:`torchslim.core.search`; the defaults below are theirs); this space holds their values
    (``SPACE_FIELDS``). A dimension with one choice here is not asked (the point leaves it out) and
    that choice goes into every recipe.

    Args:
        groups: layer groups (see :func:`group_key`) that get their own bit width.
        linear_only_groups: groups made only of Linear layers (int4 applies to those).
        prune_methods: among ``none``, ``magnitude``, ``wanda``, ``channels``.
        sparsity: (low, high, step) of unstructured sparsity.
        channel_ratio: (low, high, step) of the per-layer fraction of channels removed; the default
            steps of 1/32 are exact binary fractions (a sampled value equals an enqueued one) and keep
            power-of-two channel counts whole.
        channel_round_to: choices for keeping channel counts multiples of N (1: no rounding).
        channel_sparsity: choices of unstructured (global magnitude) sparsity applied on top of channel
            pruning, after its recovery step, with the gradual schedule and fine-tuning when the point
            trains (0.0 first: none). Structure removes whole channels; the weights left are then thinned
            for the artifact (sparse storage), as in Han et al.'s Deep Compression. Empty: not searched.
        max_drop_layers: most blocks layer dropping may remove (0: not searched).
        recovery: among ``none``, ``finetune``, ``distill`` (empty or ``("none",)``: not searched).
        finetune_epochs / finetune_lr: training budget of a fine-tuning step.
        distill_epochs / distill_lr: choices for a distillation step (an int / float: one choice); the
            first ones are used when a refinement move adds distillation to a point.
        quant: among ``none``, ``bf16``, ``int8`` (and ``int4`` when installed).
        int8_methods: the int8 techniques to choose from (``int8-static``, ``int8-dynamic``, ``int8-weight-only``).
        int4_group_sizes / int4_methods: int4 choices (used only when ``int4`` is in ``quant``).
        fold_bn: add a ``fold-batchnorm`` step before quantization.
        embeddings: choices for ``nn.Embedding`` tables in a quantizing point, among ``fp32`` and ``int8``
            (empty: not searched, the technique's default: int8 with one int8 width everywhere, else fp32;
            one choice: always that one).
    """

    groups: tuple[str, ...] = ()
    linear_only_groups: tuple[str, ...] = ()
    prune_methods: tuple[str, ...] = PRUNE_METHODS
    sparsity: tuple[float, float, float] = search_dims(MagnitudePruning)["sparsity"].range
    channel_ratio: tuple[float, float, float] = _CHANNELS["channel_ratio"].range
    channel_round_to: tuple[int, ...] = _CHANNELS["channel_round_to"].values
    channel_sparsity: tuple[float, ...] = ()
    max_drop_layers: int = 0
    recovery: tuple[str, ...] = RECOVERY
    finetune_epochs: int = 10
    finetune_lr: float = 1e-3
    distill_epochs: tuple[int, ...] = _DISTILL["distill_epochs"].values
    distill_lr: tuple[float, ...] = _DISTILL["distill_lr"].values
    quant: tuple[str, ...] = ("none", "bf16", "int8")
    int8_methods: tuple[str, ...] = ("int8-dynamic", "int8-weight-only")
    int4_group_sizes: tuple[int, ...] = _INT4["int4_group_size"].values
    int4_methods: tuple[str, ...] = _INT4["int4_method"].values
    fold_bn: bool = False
    embeddings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("distill_epochs", "distill_lr"):  # one value: a single choice
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (int, float)) else tuple(value))
        problems = []
        if not self.distill_epochs or not all(isinstance(e, int) and e > 0 for e in self.distill_epochs):
            problems.append(f"distill_epochs: must be integers > 0, got {self.distill_epochs!r}")
        if not self.distill_lr or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in self.distill_lr):
            problems.append(f"distill_lr: must be numbers in (0, 1], got {self.distill_lr!r}")
        for m in self.prune_methods:
            if m not in PRUNE_METHODS:
                problems.append(f"prune_methods: unknown {m!r}; use {', '.join(PRUNE_METHODS)}")
        for m in self.recovery:
            if m not in RECOVERY:
                problems.append(f"recovery: unknown {m!r}; use {', '.join(RECOVERY)}")
        for m in self.int8_methods:
            if m not in INT8:
                problems.append(f"int8_methods: unknown {m!r}; use {', '.join(INT8)}")
        for m in self.quant:
            if m not in ("none", "bf16", "int8", "int4"):
                problems.append(f"quant: unknown {m!r}; use none, bf16, int8, int4")
        for m in self.embeddings:
            if m not in EMBEDDINGS:
                problems.append(f"embeddings: unknown {m!r}; use {', '.join(EMBEDDINGS)}")
        if "int4" in self.quant and int4_config_type() is None:
            problems.append("quant: int4 needs torchslim.quantization.Int4WeightOnly, which is not installed")
        if self.channel_sparsity and (
            self.channel_sparsity[0] != 0.0 or not all(0.0 <= v < 1.0 for v in self.channel_sparsity)
        ):
            problems.append(f"channel_sparsity: fractions in [0, 1) starting with 0.0, got {self.channel_sparsity!r}")
        for lo, hi, _ in (self.sparsity, self.channel_ratio):
            if not 0.0 <= lo <= hi < 1.0:
                problems.append(f"ranges must satisfy 0 <= low <= high < 1, got {lo}..{hi}")
        if problems:
            raise ConfigError("invalid search space", problems)

    @classmethod
    def for_model(cls, model: nn.Module, *, has_train_data: bool, **overrides: Any) -> SearchSpace:
        """The default space for ``model``: dimensions that do not apply to it are left out.

        Example:
            >>> s = SearchSpace.for_model(nn.Sequential(nn.Linear(4, 4)), has_train_data=False)
            >>> s.recovery, s.int8_methods
            (('none',), ('int8-dynamic', 'int8-weight-only'))
        """
        d = describe_model(model)
        int8 = ("int8-static",) if d["has_conv"] else ("int8-dynamic", "int8-weight-only")
        quant: tuple[str, ...] = ("none", "bf16", "int8")
        linear_only = tuple(g for g, kinds in d["groups"].items() if kinds == ["Linear"])
        if int4_config_type() is not None and linear_only:
            quant += ("int4",)
        kw: dict[str, Any] = {
            "groups": tuple(d["groups"]),
            "linear_only_groups": linear_only,
            "max_drop_layers": d["blocks"] // 2 if d["blocks"] >= 3 else 0,
            "recovery": RECOVERY if has_train_data else ("none",),
            "quant": quant,
            "int8_methods": int8,
            "fold_bn": d["has_bn"],
            "embeddings": EMBEDDINGS if d["has_embedding"] else (),
            "channel_sparsity": CHANNEL_SPARSITY if has_train_data else (),
        }
        kw.update(overrides)
        return cls(**kw)

    def signature(self) -> dict[str, Any]:
        """The space as plain data (stored with the study: a resumed study must use the same space)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    # -- sampling -----------------------------------------------------------------------------

    def domains(self) -> dict[str, Any]:
        """The values of every declared dimension in this space, by its name in a point (see ``SPACE_FIELDS``)."""
        return {name: getattr(self, attr) for name, attr in SPACE_FIELDS.items()}

    def _draw(self, trial: Any, config_type: type) -> dict[str, Any]:
        """Ask ``trial`` for the dimensions ``config_type`` declares, over this space's values, in field order.

        A Count is asked when the space allows more than its low end; a Choice when the space offers more
        than one value (or the dimension says ``always``); a Grid always (rounded to 6 decimals).
        """
        p: dict[str, Any] = {}
        for name, dim in search_dims(config_type).items():
            values = getattr(self, SPACE_FIELDS[name])
            if isinstance(dim, Count):
                if values > dim.low:
                    p[name] = trial.suggest_int(name, dim.low, values)
            elif isinstance(dim, Grid):
                lo, hi, step = values
                p[name] = round(trial.suggest_float(name, lo, hi, step=step), 6)
            elif len(values) > 1 or dim.always:
                p[name] = trial.suggest_categorical(name, list(values))
        return p

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw one point with an Optuna ``trial`` (define-by-run: conditional parameters only when used).

        The numbers come from the dimensions the techniques' configs declare (:meth:`_draw`); the
        choices between techniques (pruning method, recovery, quantization, bits per layer group,
        embedding tables) are the space's own.
        """
        p: dict[str, Any] = self._draw(trial, LayerDropping)
        p["prune"] = trial.suggest_categorical("prune", list(self.prune_methods))
        if p["prune"] in PRUNERS:
            p |= self._draw(trial, PRUNERS[p["prune"]])
        if p["prune"] == "channels" and len(self.channel_sparsity) > 1:
            p["channel_sparsity"] = trial.suggest_categorical("channel_sparsity", list(self.channel_sparsity))
        if len(self.recovery) > 1 and p["prune"] in ("magnitude", "wanda"):
            # Training after one-shot pruning regrows the pruned weights: unstructured pruning recovers
            # with a gradual schedule (masks kept while training), so it gets its own choice set.
            if p["prune"] == "magnitude" and "finetune" in self.recovery:
                p["recovery"] = trial.suggest_categorical("recovery_sparse", ["none", "finetune"])
        elif len(self.recovery) > 1:
            p["recovery"] = trial.suggest_categorical("recovery", list(self.recovery))
        if p.get("recovery") == "distill":
            p |= self._draw(trial, Distill)
        p["quant"] = trial.suggest_categorical("quant", list(self.quant))
        if p["quant"] == "int8":
            if len(self.int8_methods) > 1:
                p["int8_method"] = trial.suggest_categorical("int8_method", list(self.int8_methods))
            for g in self.groups:
                p[f"bits:{g}"] = trial.suggest_categorical(f"bits:{g}", [8, 32])
        elif p["quant"] == "int4":
            p |= self._draw(trial, Int4WeightOnly)
            for g in self.linear_only_groups:  # its own name: a parameter's choices must not change
                p[f"int4_bits:{g}"] = trial.suggest_categorical(f"int4_bits:{g}", [4, 8, 32])
        if p["quant"] in ("int8", "int4") and len(self.embeddings) > 1:
            p["embeddings"] = trial.suggest_categorical("embeddings", list(self.embeddings))
        return p

    def named_anchors(self, recipes: Iterable[Recipe] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Starting points with where they come from, as ``(origin, Optuna parameters)``, no point twice.

        First every recipe of ``recipes`` (None: the built-in recipes) the space expresses exactly
        (:func:`~torchslim.tuning.moves.point_of`) and that changes the model, origin ``builtin:NAME``; then the usual recipes of
        each family, origin ``family``: half / three quarters of the channels removed then recovered,
        three quarters removed, recovered and 70% of the rest thinned, 90% unstructured sparsity with fine-tuning, int8 everywhere, int4 Linear layers (largest groups)
        with int8 embedding tables when the space searches ``embeddings`` (only dimensions the space has).

        Example:
            >>> space = SearchSpace(groups=("fc",), recovery=("none",), prune_methods=("none",))
            >>> [origin for origin, _ in space.named_anchors()]
            ['builtin:bf16', 'builtin:int8-dynamic', 'builtin:int8-weight-only']
        """
        from torchslim.tuning.moves import OutOfSpace, point_key, point_of, replay

        if recipes is None:
            from torchslim.recipes import builtin_recipes

            recipes = builtin_recipes().values()
        found: list[tuple[str, dict[str, Any]]] = []
        for recipe in recipes:
            point = point_of(self, recipe)
            if point is not None and self.changes(point):
                found.append((f"builtin:{recipe.name}", point))
        quant = "int8" if "int8" in self.quant else self.quant[0]
        recover = next((r for r in ("distill", "finetune") if r in self.recovery and len(self.recovery) > 1), None)
        family: list[dict[str, Any]] = []
        if "channels" in self.prune_methods and recover:
            family += [
                {"prune": "channels", "channel_ratio": r, "recovery": recover, "quant": quant} for r in (0.5, 0.75)
            ]
        if "channels" in self.prune_methods and recover and 0.7 in self.channel_sparsity:
            # Deep Compression's order: three quarters of the channels out, recovered, then 70% of the
            # weights left thinned with fine-tuning (sparse storage), then int8.
            family.append(
                {
                    "prune": "channels",
                    "channel_ratio": 0.75,
                    "recovery": recover,
                    "channel_sparsity": 0.7,
                    "quant": quant,
                }
            )
        if "magnitude" in self.prune_methods and "finetune" in self.recovery and len(self.recovery) > 1:
            bf16 = "bf16" if "bf16" in self.quant else self.quant[0]
            family.append({"prune": "magnitude", "sparsity": 0.9, "recovery_sparse": "finetune", "quant": bf16})
        if "int8" in self.quant and "none" in self.prune_methods:
            family.append({"prune": "none", "recovery": "none", "quant": "int8", "embeddings": "int8"})
        if "int4" in self.quant and "int8" in self.embeddings and "none" in self.prune_methods:
            # Embedding tables are most of a transformer encoder: int4 Linear layers beside int8 tables.
            g = max(self.int4_group_sizes)
            family.append(
                {"prune": "none", "recovery": "none", "quant": "int4", "int4_group_size": g, "embeddings": "int8"}
            )
        for values in family:
            try:  # the dimensions a family point leaves open take their first choice
                found.append(("family", replay(self, values, fill=True).params))
            except OutOfSpace:
                continue
        out, seen = [], set()
        for origin, point in found:
            if point_key(point) not in seen:
                seen.add(point_key(point))
                out.append((origin, point))
        return out

    def anchors(self, recipes: Iterable[Recipe] | None = None) -> list[dict[str, Any]]:
        """Known-good starting points, as Optuna parameters, queued first in a new study (a warm start).

        The built-in recipes the space expresses (so the study is never worse than one of them), then the
        usual recipes of each family; see :meth:`named_anchors`.

        Example:
            >>> SearchSpace(groups=("fc",), recovery=("none",), prune_methods=("none",)).anchors(recipes=())
            [{'prune': 'none', 'quant': 'int8', 'int8_method': 'int8-dynamic', 'bits:fc': 8}]
        """
        return [point for _, point in self.named_anchors(recipes)]

    def neighbours(self, params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """Points one step from ``params``, by kind of step (see :func:`torchslim.tuning.moves.neighbours`)."""
        from torchslim.tuning.moves import neighbours

        return neighbours(self, params)

    def point_of(self, recipe: Recipe) -> dict[str, Any] | None:
        """The point that runs the same steps as ``recipe``, or None (see :func:`torchslim.tuning.moves.point_of`)."""
        from torchslim.tuning.moves import point_of

        return point_of(self, recipe)

    # -- recipe -------------------------------------------------------------------------------

    def plan(self, params: dict[str, Any]) -> tuple[list[dict], list[dict] | None]:
        """The steps of a point as plain data: ``(quick, full)``.

        ``quick`` is the recipe without training (same structure, size and speed, quality before
        recovery): the cheap estimate a trial evaluates first. ``full`` is the recipe itself, or None
        when it has no training step (then ``quick`` is the recipe). Each step's config is built from
        the point through its declared dimensions (:func:`torchslim.tuning.techniques.build`).
        """
        domains = self.domains()
        quick: list[dict] = []
        thin = 0.0  # sparsity on top of channel pruning
        if params.get("drop_layers", 0):
            quick.append(step_data(build(LayerDropping, params, domains)))
        full = list(quick)
        prune = params.get("prune", "none")
        recovery = params.get("recovery", params.get("recovery_sparse", "none"))  # either name (see suggest)
        if prune in ("magnitude", "wanda"):
            fixed = {"scope": "global"} if prune == "magnitude" else {}
            quick.append(step_data(build(PRUNERS[prune], params, domains, **fixed)))
            if recovery == "finetune":  # Zhu & Gupta schedule: masks stay while fine-tuning
                full.append(self._gradual(params))
            else:
                full.append(quick[-1])
        elif prune == "channels":
            quick.append(step_data(build(ChannelPruning, params, domains, scope="layer")))
            full.append(quick[-1])
            thin = float(params.get("channel_sparsity", 0.0))
        elif prune != "none":
            raise ConfigError("invalid point", [f"prune: unknown method {prune!r}"])
        if prune != "magnitude" and recovery == "finetune":
            full.append(step_data(FineTune(epochs=self.finetune_epochs, lr=self.finetune_lr)))
        elif recovery == "distill":
            full.append(step_data(build(Distill, params, domains)))
        if thin > 0:  # after the recovery of the channel pruning: thin the weights left, then fine-tune
            thinned = {"sparsity": thin}  # the point's channel_sparsity, as the pruners' sparsity dimension
            quick.append(step_data(build(MagnitudePruning, thinned, domains, scope="global")))
            full.append(self._gradual(thinned) if recovery != "none" else quick[-1])
        finish: list[dict] = [step_data(FoldBatchNorm())] if self.fold_bn else []
        finish += self._quant_steps(params)
        return quick + finish, (full + finish if recovery != "none" else None)

    def _gradual(self, params: dict[str, Any]) -> dict[str, Any]:
        e = self.finetune_epochs
        config = build(
            GradualPruning, params, self.domains(), steps=3, epochs_per_step=max(1, e // 5), final_epochs=e,
            lr=self.finetune_lr,
        )  # fmt: skip
        return step_data(config)

    def changes(self, params: dict[str, Any]) -> bool:
        """Whether the point's recipe changes the model beyond folding BatchNorm (``fold-bn`` is the baseline)."""
        quick, full = self.plan(params)
        return full is not None or any(step["kind"] != FoldBatchNorm.kind for step in quick)

    def _quant_steps(self, params: dict[str, Any]) -> list[dict]:
        quant = params.get("quant", "none")
        if quant == "none":
            return []
        if quant == "bf16":
            return [step_data(CastDtype(dtype="bfloat16"))]
        steps: list[dict] = []
        by_bits: dict[int, list[str]] = {}
        prefix = "int4_bits:" if quant == "int4" else "bits:"
        for g in self.groups:
            by_bits.setdefault(int(params.get(prefix + g, 32)), []).append(group_regex(g))
        # One width for every group: no selection, the technique's default (what the built-in recipes run).
        select = (lambda bits: None) if len(by_bits) == 1 else (lambda bits: {"include": by_bits[bits]})
        if by_bits.get(4):
            steps.append(step_data(build(Int4WeightOnly, params, self.domains(), progress=False), select(4)))
        emb = params.get("embeddings", self.embeddings[0] if len(self.embeddings) == 1 else None)
        uniform8 = list(by_bits) == [8]
        if by_bits.get(8):
            method = params.get("int8_method", self.int8_methods[0] if quant == "int8" else Int8WeightOnly.kind)
            off = (
                {"embeddings": False} if uniform8 and emb == "fp32" and INT8[method] is not INT8["int8-static"] else {}
            )
            steps.append(step_data(INT8[method](**off), select(8)))
        if emb == "int8" and not uniform8:  # int4 and selected int8 steps leave embeddings alone
            steps.append(step_data(Int8WeightOnly(), {"types": ["Embedding"]}))
        return steps

    def recipe(self, params: dict[str, Any], *, name: str = "tuned", description: str = "", seed: int = 0) -> Recipe:
        """The recipe of one point (validated through ``recipe_from_dict``)."""
        quick, full = self.plan(params)
        data = {
            "name": name,
            "description": description or describe_point(params),
            "seed": seed,
            "steps": full if full is not None else quick,
        }
        return recipe_from_dict(data, name)


def describe_point(params: dict[str, Any]) -> str:
    """A one-line summary of a point.

    Example:
        >>> describe_point({"prune": "channels", "channel_ratio": 0.5, "recovery": "finetune", "quant": "bf16"})
        'channels 0.5, finetune, bf16'
        >>> describe_point({"prune": "channels", "channel_ratio": 0.8125, "recovery": "distill", "distill_epochs": 30,
        ...                 "distill_lr": 0.003, "quant": "int8", "bits:fc": 8})
        'channels 0.8125, distill (30 ep, lr 0.003), int8 [fc:8]'
    """
    parts = []
    if params.get("drop_layers"):
        parts.append(f"drop {params['drop_layers']} blocks")
    prune = params.get("prune", "none")
    if prune in ("magnitude", "wanda"):
        parts.append(f"{prune} {params['sparsity']:g}")
    elif prune == "channels":
        r = int(params.get("channel_round_to", 1))
        parts.append(f"channels {params['channel_ratio']:g}" + (f" (x{r})" if r > 1 else ""))
    recovery = params.get("recovery", params.get("recovery_sparse", "none"))
    if recovery == "distill" and ("distill_epochs" in params or "distill_lr" in params):
        detail = [f"{params['distill_epochs']} ep"] if "distill_epochs" in params else []
        detail += [f"lr {params['distill_lr']:g}"] if "distill_lr" in params else []
        parts.append(f"distill ({', '.join(detail)})")
    elif recovery != "none":
        parts.append(recovery)
    if prune == "channels" and params.get("channel_sparsity"):  # after the recovery (see plan)
        parts.append(f"then magnitude {params['channel_sparsity']:g}")
    quant = params.get("quant", "none")
    if quant in ("int8", "int4"):
        bits = [f"{k.partition(':')[2]}:{v}" for k, v in params.items() if k.startswith(("bits:", "int4_bits:"))]
        method = params.get("int8_method", params.get("int4_method", quant))
        parts.append(
            f"{method} [{' '.join(bits)}]" + (f", embeddings {params['embeddings']}" if "embeddings" in params else "")
        )
    elif quant != "none":
        parts.append(quant)
    return ", ".join(parts) or "no change"
