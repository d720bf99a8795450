"""The composed search space of ``torchslim tune --space composed``: depth, width, embedding table and
int8/int4, each structural step followed by distillation from the input model (issue #21).

A point chains, in this order (a step is left out when the point does not change anything there)::

    layer-dropping (keep_blocks) -> distill (depth_epochs)
    -> channel-pruning (head_ratio, ffn_ratio; activation-aware) -> distill (width_epochs, hidden-state terms)
    -> factorize-embedding (embeddings: factorized-R[-int4]) -> distill (embed_epochs, + embedding-layer term)
    -> int4-weight-only on the layer groups at 4 bits (bits:GROUP)
    -> int8-dynamic (int8 Linears; the table's rows int8, or int4 for the ``int4`` formats)

every distill step at ``distill_lr``, with the embedding loss on the sentence embeddings and, after the
width and embedding steps, hidden-state terms matching kept block *i* to the teacher's block
``keep_blocks[i]`` (as in the built-in ``minilm-edge`` recipe, whose point is a point of this space). The
teacher is the input model (``run_recipe``'s rule), the training data the workload's ``train_data``.

Trials that train run for many minutes on a real encoder, so the search makes the most of few trials:

* the study starts from known good points: every built-in recipe the space expresses exactly
  (:meth:`ComposedSpace.point_of`: ``minilm-edge`` on a 6-block BERT), then the recipes the user gives
  (``tune --start RECIPE``);
* hopeless trials stop early: each distill step evaluates the validation split at its evaluations
  (``eval_every``; by default the end of every epoch) and :class:`DistillMonitor` reports the drop to
  Optuna (``trial.report``); the trial is pruned when the drop at the end of a distill step already exceeds
  the budget (every later step removes capacity or quantizes; distillation recovers towards the quality
  before the step, not beyond it), or when any evaluation's drop exceeds ``recover_limit``;
* no point runs twice (the study's duplicate check on the trial parameters applies to this space too).

Evaluating during distillation does not change the trained weights: each evaluation runs in a forked
random state, and the monitor's first metric is the evaluation count, so the trainer's "best" weights are
always the last ones, exactly the weights a plain ``run_recipe`` of the same recipe
(``compress --recipe best.yaml``) ends with.

Example:
    >>> space = ComposedSpace(blocks=6, keep_blocks=("0,3,5", "0,2,5"), groups=("bert.encoder.layer.*.output.dense",),
    ...                       embeddings=("factorized-128", "int8"))
    >>> point = {"keep_blocks": "0,3,5", "depth_epochs": 1, "head_ratio": 0.0, "ffn_ratio": 0.0,
    ...          "embeddings": "int8", "distill_lr": 0.0003, "bits:bert.encoder.layer.*.output.dense": 8}
    >>> [s["kind"] for s in space.plan(point)[1]]
    ['layer-dropping', 'distill', 'int8-dynamic']
    >>> space.plan(point)[1][0]["indices"]
    [1, 2, 4]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import ConfigError
from torchslim.recipes import Recipe, recipe_from_dict, run_recipe
from torchslim.tuning.groups import group_regex
from torchslim.tuning.space import describe_model
from torchslim.tuning.techniques import ChannelPruning, Distill, Int4WeightOnly, LayerDropping, step_data

__all__ = ["ComposedSpace", "DistillMonitor", "run_monitored"]

# The int8 step of the built-in minilm-edge recipe: SmoothQuant 0.5, layers under 33 dB kept in float with
# up to 32 float input channels, bf16 between layers, compiled.
EDGE_INT8 = {
    "smoothquant": 0.5,
    "min_sqnr_db": 33.0,
    "outliers": 32,
    "fallback": "float32",
    "compute_dtype": "bfloat16",
    "compile": True,
}
_RATIOS = (0.0, 0.25, 0.5, 0.625, 0.75)


def _keep(text: str) -> tuple[int, ...]:
    return tuple(int(i) for i in text.split(","))


@dataclass(frozen=True)
class ComposedSpace:
    """Depth, width, embedding format, distillation schedule and int8/int4 per layer group (module docstring).

    Every dimension is categorical; the first choice of each is the one a new point leans on.

    Args:
        blocks: number of transformer blocks of the model.
        keep_blocks: choices of the blocks kept, as ``"0,3,5"`` (all blocks: no layer dropping).
        head_ratio / ffn_ratio: choices of the fraction of attention heads / FFN neurons removed in every block.
        depth_epochs / width_epochs / embed_epochs: epochs of the distill step after each structural step.
        distill_lr: choices of the learning rate of every distill step.
        embeddings: the word-embedding table's format: ``"int8"`` / ``"int4"`` (int8 or group-wise int4 rows
            of the full table), ``"factorized-R"`` / ``"factorized-R-int4"`` (a rank-R table times a projection,
            distilled, then int8 or int4 rows).
        groups: Linear layer groups (see :func:`torchslim.tuning.groups.group_key`), each int8 or int4.
        block_path / embedding_path: the block list and the embedding module (hidden-state taps).
        batch_size / hidden_weight: the distill steps' batch size and hidden-state term weight.
        int8: the int8-dynamic step's settings; ``int4_group_size``: the int4 steps' group size.
        embedding_group_size: the int4 embedding rows' group (halved until it divides every table's width).
        hidden: the table's width (orders the embedding formats by bytes per row; 0: unknown, the full
            table counted wider than any factorized one).
    """

    blocks: int
    keep_blocks: tuple[str, ...]
    groups: tuple[str, ...] = ()
    head_ratio: tuple[float, ...] = (0.5, 0.25, 0.0, 0.625, 0.75)
    ffn_ratio: tuple[float, ...] = (0.5, 0.25, 0.0, 0.625, 0.75)
    depth_epochs: tuple[int, ...] = (1, 2)
    width_epochs: tuple[int, ...] = (2, 1, 3)
    embed_epochs: tuple[int, ...] = (2, 1, 3)
    distill_lr: tuple[float, ...] = (0.0003, 0.0001, 0.001)
    embeddings: tuple[str, ...] = ("factorized-128", "factorized-64", "factorized-192", "int8")
    block_path: str = "bert.encoder.layer"
    embedding_path: str = "bert.embeddings"
    batch_size: int = 32
    hidden_weight: float = 0.001
    int8: dict[str, Any] = field(default_factory=lambda: dict(EDGE_INT8))
    int4_group_size: int = 32
    embedding_group_size: int = 64
    hidden: int = 0
    kind: str = "composed"

    # run a trial's distill steps through DistillMonitor (tune reads this)
    monitors_training = True

    def __post_init__(self) -> None:
        problems = []
        for text in self.keep_blocks:
            try:
                kept = _keep(text)
            except ValueError:
                problems.append(f"keep_blocks: {text!r} is not a comma-separated list of block indices")
                continue
            if not kept or list(kept) != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= self.blocks:
                problems.append(f"keep_blocks: {text!r} must be increasing indices in 0..{self.blocks - 1}")
        for name in ("head_ratio", "ffn_ratio"):
            if not all(isinstance(v, float | int) and 0 <= v < 1 for v in getattr(self, name)):
                problems.append(f"{name}: fractions in [0, 1), got {getattr(self, name)!r}")
        for name in ("depth_epochs", "width_epochs", "embed_epochs"):
            if not all(isinstance(v, int) and v > 0 for v in getattr(self, name)):
                problems.append(f"{name}: integers > 0, got {getattr(self, name)!r}")
        if not all(isinstance(v, float | int) and 0 < v <= 1 for v in self.distill_lr):
            problems.append(f"distill_lr: numbers in (0, 1], got {self.distill_lr!r}")
        for e in self.embeddings:
            if _embedding_format(e) is None:
                problems.append(
                    f"embeddings: {e!r} is none of 'int8', 'int4', 'factorized-RANK', 'factorized-RANK-int4'"
                )
        for name in ("keep_blocks", "head_ratio", "ffn_ratio", "depth_epochs", "width_epochs", "embed_epochs",
                     "distill_lr", "embeddings"):  # fmt: skip
            if not getattr(self, name):
                problems.append(f"{name}: give at least one choice")
        if problems:
            raise ConfigError("invalid composed search space", problems)

    @classmethod
    def for_model(cls, model: nn.Module, recipes: Iterable[Recipe] = (), **overrides: Any) -> ComposedSpace:
        """The composed space of a BERT-style encoder ``model``, holding the points of ``recipes`` where it can.

        Blocks kept: each recipe's kept set, then half, two thirds and one third of the blocks spread
        evenly (first and last kept). Embedding formats: the recipes', then factorized tables of a sixth, a
        third and half of the hidden size (multiples of 8) with int8 rows, one of two thirds with int4 rows,
        int4 rows of the full table, int8 rows of the full table.

        Raises:
            ConfigError: the model has no stack of repeated blocks or no Linear layers in them.
        """
        d = describe_model(model)
        n = d["blocks"]
        if n < 2:
            raise ConfigError("the composed space needs a model with a stack of repeated blocks (none found)")
        block_path = overrides.get("block_path", cls.block_path)
        groups = tuple(
            g for g, kinds in d["groups"].items() if kinds == ["Linear"] and g.startswith(block_path + ".*.")
        )
        if not groups:
            raise ConfigError(f"the composed space found no Linear layer groups under {block_path!r}")
        hidden = _hidden_size(model)
        keeps: list[str] = []
        ranks: list[str] = []
        for recipe in recipes:
            for step in recipe.steps:
                if isinstance(step.config, LayerDropping) and step.config.indices:
                    keeps.append(",".join(str(i) for i in range(n) if i not in step.config.indices))
                if step.config.kind == "factorize-embedding":
                    ranks.append(f"factorized-{step.config.rank}")
                if step.config.kind == "int8-dynamic" and step.config.embeddings == "int4":
                    overrides.setdefault("embedding_group_size", step.config.embedding_group_size)
                    if ranks:
                        ranks[-1] += "-int4"
        for k in (n // 2, (2 * n) // 3, n // 3):
            if k >= 2:
                keeps.append(",".join(str(round(i * (n - 1) / (k - 1))) for i in range(k)))
        keeps.append(",".join(str(i) for i in range(n)))
        for frac in (6, 3, 2):
            r = max(8, hidden // frac // 8 * 8)
            if r < hidden:
                ranks.append(f"factorized-{r}")
        r = max(8, 2 * hidden // 3 // 8 * 8)
        if r < hidden:
            ranks.append(f"factorized-{r}-int4")
        kw: dict[str, Any] = {
            "blocks": n,
            "keep_blocks": tuple(dict.fromkeys(keeps)),
            "groups": groups,
            "embeddings": (*dict.fromkeys(ranks), "int4", "int8"),
            "hidden": hidden,
        }
        return cls(**(kw | overrides))

    def signature(self) -> dict[str, Any]:
        """The space as plain data (stored with the study: a resumed study must use the same space)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    # -- sampling -----------------------------------------------------------------------------

    def _dims(self) -> dict[str, tuple]:
        dims: dict[str, tuple] = {
            "keep_blocks": self.keep_blocks,
            "head_ratio": self.head_ratio,
            "ffn_ratio": self.ffn_ratio,
            "embeddings": self.embeddings,
            "distill_lr": self.distill_lr,
        }
        return dims | {f"bits:{g}": (8, 4) for g in self.groups}

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw one point with an Optuna ``trial``; an epoch count is asked only where its distill step exists."""
        p: dict[str, Any] = {}
        for name, choices in self._dims().items():
            p[name] = trial.suggest_categorical(name, list(choices))
        for name, used in self._stages(p):
            if used:
                p[name] = trial.suggest_categorical(name, list(getattr(self, name)))
        return p

    def _stages(self, p: dict[str, Any]) -> list[tuple[str, bool]]:
        """Each distill stage's epochs dimension and whether the point has that stage."""
        return [
            ("depth_epochs", len(_keep(p["keep_blocks"])) < self.blocks),
            ("width_epochs", p["head_ratio"] > 0 or p["ffn_ratio"] > 0),
            ("embed_epochs", _embedding_format(p["embeddings"])[0] is not None),
        ]

    # -- recipe -------------------------------------------------------------------------------

    def _distill(self, p: dict[str, Any], epochs: str, kept: tuple[int, ...], *, hidden: bool, emb: bool) -> dict:
        terms = [{"loss": "embedding", "weight": 1.0}]
        if emb:
            terms.append({"loss": "hidden", "weight": self.hidden_weight, "student": self.embedding_path,
                          "teacher": self.embedding_path})  # fmt: skip
        if hidden:
            terms += [
                {
                    "loss": "hidden",
                    "weight": self.hidden_weight,
                    "student": f"{self.block_path}.{i}",
                    "teacher": f"{self.block_path}.{t}",
                }  # fmt: skip
                for i, t in enumerate(kept)
            ]
        config = Distill.from_dict(
            {"terms": terms, "epochs": p[epochs], "lr": p["distill_lr"], "batch_size": self.batch_size}
        )
        return step_data(config)

    def plan(self, params: dict[str, Any]) -> tuple[list[dict], list[dict] | None]:
        """The steps of a point as plain data: ``(quick, full)``; ``quick`` leaves out the distill steps
        (same shapes, size and speed), ``full`` is None when the point trains nothing."""
        p = params
        kept = _keep(p["keep_blocks"])
        full: list[dict] = []
        stages = dict(self._stages(p))
        if stages["depth_epochs"]:
            full.append(step_data(LayerDropping(indices=tuple(i for i in range(self.blocks) if i not in kept))))
            full.append(self._distill(p, "depth_epochs", kept, hidden=False, emb=False))
        if stages["width_epochs"]:
            config = ChannelPruning(ratio=p["ffn_ratio"], head_ratio=p["head_ratio"], importance="activation")
            full.append(step_data(config))
            full.append(self._distill(p, "width_epochs", kept, hidden=True, emb=False))
        rank, bits = _embedding_format(p["embeddings"])
        if stages["embed_epochs"]:
            full.append({"kind": "factorize-embedding", "rank": rank, "select": {"include": ["word_embeddings$"]}})
            full.append(self._distill(p, "embed_epochs", kept, hidden=True, emb=True))
        int4 = [group_regex(g) for g in self.groups if int(p.get(f"bits:{g}", 8)) == 4]
        if int4:  # int8-dynamic after it quantizes the nn.Linear layers left (and the embedding tables)
            config = Int4WeightOnly(group_size=self.int4_group_size, progress=False)
            full.append(step_data(config, {"include": int4}))
        int8 = self.int8 | ({"embeddings": "int4", "embedding_group_size": self._int4_group(rank)} if bits == 4 else {})
        full.append({"kind": "int8-dynamic", **int8})
        quick = [s for s in full if s["kind"] != Distill.kind]
        return quick, (full if len(quick) < len(full) else None)

    def recipe(self, params: dict[str, Any], *, name: str = "tuned", description: str = "", seed: int = 0) -> Recipe:
        """The recipe of one point (validated through ``recipe_from_dict``)."""
        quick, full = self.plan(params)
        steps = full if full is not None else quick
        data = {"name": name, "description": description or self.describe(params), "seed": seed, "steps": steps}
        return recipe_from_dict(data, name)

    def changes(self, params: dict[str, Any]) -> bool:
        """Always True: every point quantizes."""
        return True

    def describe(self, params: dict[str, Any]) -> str:
        """A one-line summary of a point.

        Example:
            >>> ComposedSpace(blocks=6, keep_blocks=("0,3,5",)).describe({"keep_blocks": "0,3,5", "depth_epochs": 1,
            ...     "head_ratio": 0.5, "ffn_ratio": 0.5, "width_epochs": 2, "embeddings": "int8", "distill_lr": 0.0003})
            'keep 0,3,5 (1 ep), heads -0.5 ffn -0.5 (2 ep), int8 rows, lr 0.0003, int8'
        """
        p = params
        parts = []
        if "depth_epochs" in p:
            parts.append(f"keep {p['keep_blocks']} ({p['depth_epochs']} ep)")
        if "width_epochs" in p:
            parts.append(f"heads -{p['head_ratio']:g} ffn -{p['ffn_ratio']:g} ({p['width_epochs']} ep)")
        emb = p.get("embeddings", "int8")
        parts.append(f"{emb} ({p['embed_epochs']} ep)" if "embed_epochs" in p else f"{emb} rows")
        if any(name in p for name in ("depth_epochs", "width_epochs", "embed_epochs")):
            parts.append(f"lr {p['distill_lr']:g}")
        int4 = [
            k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] for k, v in p.items() if k.startswith("bits:") and v == 4
        ]
        parts.append(f"int4 [{' '.join(int4)}]" if int4 else "int8")
        return ", ".join(parts)

    # -- recipe -> point ----------------------------------------------------------------------

    def point_of(self, recipe: Recipe) -> dict[str, Any] | None:
        """The point whose recipe has exactly ``recipe``'s steps, or None when the space does not hold it."""
        p: dict[str, Any] = {"keep_blocks": ",".join(map(str, range(self.blocks))), "head_ratio": 0.0,
                             "ffn_ratio": 0.0, "embeddings": "int8", "distill_lr": self.distill_lr[0]}  # fmt: skip
        p |= {f"bits:{g}": 8 for g in self.groups}
        stage = None
        for step in recipe.steps:
            c = step.config
            if isinstance(c, LayerDropping):
                if not c.indices:
                    return None
                p["keep_blocks"], stage = ",".join(str(i) for i in range(self.blocks) if i not in c.indices), "depth"
            elif isinstance(c, ChannelPruning):
                p["head_ratio"], p["ffn_ratio"], stage = c.head_ratio, c.ratio, "width"
            elif c.kind == "factorize-embedding":
                p["embeddings"], stage = f"factorized-{c.rank}", "embed"
            elif isinstance(c, Distill) and stage is not None:
                p[f"{stage}_epochs"], p["distill_lr"] = c.epochs, c.lr
            elif c.kind == "int8-dynamic" and c.embeddings == "int4":
                p["embeddings"] = "int4" if p["embeddings"] == "int8" else p["embeddings"] + "-int4"
            elif isinstance(c, Int4WeightOnly) and step.select is not None:
                for g in self.groups:
                    if group_regex(g) in step.select.include:
                        p[f"bits:{g}"] = 4
        for name, choices in self._dims().items():
            if p.get(name) not in choices:
                return None
        for name, used in self._stages(p):
            if used and p.get(name) not in getattr(self, name):
                return None
        try:
            mine = self.recipe(p)
        except (ConfigError, KeyError, ValueError):
            return None
        same = [s.to_dict() for s in mine.steps] == [dataclasses.replace(s, name="").to_dict() for s in recipe.steps]
        return p if same else None

    def named_anchors(self, recipes: Iterable[Recipe] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """``(origin "builtin:NAME", point)`` of every recipe of ``recipes`` (None: the built-ins) the space holds,
        those that train first (on a 6-block BERT: ``minilm-edge``, then ``int8-dynamic-compiled``)."""
        from torchslim.tuning.moves import point_key

        if recipes is None:
            from torchslim.recipes import builtin_recipes

            recipes = builtin_recipes().values()
        out, seen = [], set()
        for recipe in recipes:
            point = self.point_of(recipe)
            if point is not None and point_key(point) not in seen:
                seen.add(point_key(point))
                out.append((f"builtin:{recipe.name}", point))
        # Composed pipelines (those that train) first: minilm-edge before int8-dynamic-compiled.
        return sorted(out, key=lambda item: self.plan(item[1])[1] is None)

    def neighbours(self, params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """Points one choice away from ``params`` along one dimension, by kind of move.

        ``compress``: fewer blocks, more heads/FFN removed, a smaller embedding format, a group to int4;
        ``recover``: more epochs of a distill step, another learning rate; ``relax``: the opposite of
        compress; ``other``: a same-size change of the blocks kept.
        """
        moves: dict[str, list[dict[str, Any]]] = {"compress": [], "recover": [], "other": [], "relax": []}
        p = {k: v for k, v in params.items() if not k.endswith("_epochs")}
        for name, choices in self._dims().items():
            for value in choices:
                if value == p.get(name):
                    continue
                q = self._complete(p | {name: value}, params)
                moves[self._kind(name, p.get(name), value)].append(q)
        for name, used in self._stages(params):
            if used:
                for value in getattr(self, name):
                    if value > params[name]:
                        moves["recover"].append(params | {name: value})
        return moves

    def _complete(self, p: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        """``p`` with the epochs of each stage it has (the old point's, else the first choice)."""
        out = dict(p)
        for name, used in self._stages(p):
            if used:
                out[name] = old.get(name, getattr(self, name)[0])
        return out

    def _int4_group(self, rank: int | None) -> int:
        """The int4 rows' group: ``embedding_group_size``, halved until it divides every table's width (the
        factorized table's rank and the other tables' hidden width; 2 at least)."""
        width, g = math.gcd(rank or 0, self.hidden), self.embedding_group_size
        while width and g > 2 and width % g:
            g //= 2
        return g

    def _row_bits(self, fmt: str) -> int:
        rank, bits = _embedding_format(fmt) or (None, 8)
        return (rank if rank is not None else self.hidden or 1 << 20) * bits

    def _kind(self, name: str, old: Any, new: Any) -> str:
        if name == "distill_lr":
            return "recover"
        if name == "keep_blocks":
            a, b = len(_keep(old)), len(_keep(new))
            return "compress" if b < a else "relax" if b > a else "other"
        if name == "embeddings":  # bytes per row: rank (or the full width) times bits
            return "compress" if self._row_bits(new) < self._row_bits(old) else "relax"
        if name.startswith("bits:"):
            return "compress" if new < old else "relax"
        return "compress" if new > old else "relax"


def _embedding_format(text: str) -> tuple[int | None, int] | None:
    """``(rank or None for the full table, bits of a row's values)`` of an embedding format, None if invalid.

    Example:
        >>> _embedding_format("factorized-256-int4"), _embedding_format("int8"), _embedding_format("int2")
        ((256, 4), (None, 8), None)
    """
    if text in ("int8", "int4"):
        return None, int(text[3:])
    body, bits = (text[:-5], 4) if text.endswith("-int4") else (text, 8)
    rank = body.removeprefix("factorized-")
    if body.startswith("factorized-") and rank.isdigit() and int(rank) > 0:
        return int(rank), bits
    return None


def _hidden_size(model: nn.Module) -> int:
    config = getattr(getattr(model, "bert", model), "config", None)
    if config is not None and hasattr(config, "hidden_size"):
        return int(config.hidden_size)
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is None:
        raise ConfigError("the composed space needs an encoder with an embedding table")
    return emb.embedding_dim


class DistillMonitor:
    """Reports a trial's validation drop at every evaluation of its distill steps and prunes hopeless trials.

    Args:
        trial: the Optuna trial (``report`` and the ``prune_reason`` user attribute).
        budget: the study's :class:`~torchslim.tuning.budget.Budget` (its validation split and baseline).
        recover_limit: prune at any evaluation whose drop exceeds this (None: only the end-of-step rule).
        first_step: the first Optuna step number to report (tune reports the drop before training at 0).
    """

    def __init__(self, trial: Any, budget: Any, recover_limit: float | None = None, first_step: int = 1) -> None:
        self.trial, self.budget, self.recover_limit = trial, budget, recover_limit
        self.steps = itertools.count(first_step)
        self.last_drop: float | None = None
        self.evaluations: list[dict[str, float]] = []

    def _prune(self, reason: str) -> None:
        import optuna

        self.trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(reason)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The trainer's ``eval_fn``: report the drop; return the evaluation count first (keeps the last weights)."""
        step = next(self.steps)
        # An evaluation must not move the training's random streams (dropout, data order): forked here.
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            quality = float(self.budget.wl.evaluate(model, self.budget.split)[self.budget.wl.metric])
        drop = self.budget.drop(quality)
        self.last_drop = drop
        self.evaluations.append({"step": step, "quality": quality, "drop": drop})
        self.trial.set_user_attr("evaluations", self.evaluations)  # the trial's learning curve, in trials.json
        self.trial.report(drop, step)
        if self.recover_limit is not None and drop > self.recover_limit:
            self._prune(f"validation drop {drop:.4g} during distillation exceeds recover_limit {self.recover_limit:g}")
        return {"evaluation": float(step), "quality": quality}

    def end_of_step(self, index: int) -> None:
        """After distill step ``index``: prune when its last evaluation is already over the budget."""
        if self.last_drop is not None and self.last_drop > self.budget.max_drop:
            self._prune(
                f"validation drop {self.last_drop:.4g} after distill step {index + 1} exceeds the budget "
                f"{self.budget.max_drop:g} (later steps only remove capacity or quantize)"
            )


def run_monitored(model: nn.Module, recipe: Recipe, ctx: Any, monitor: DistillMonitor) -> nn.Module:
    """``run_recipe(model, recipe, ctx, measure_steps=False)`` with ``monitor`` watching every distill step.

    ``monitor.evaluate`` is the distill steps' ``distill_eval`` and ``monitor.end_of_step`` runs after each
    distill step, so the model is the one a plain run of ``recipe`` builds, unless the monitor prunes the
    trial (``optuna.TrialPruned``).
    """

    def after(i: int, _model: nn.Module) -> None:
        if isinstance(recipe.steps[i].config, Distill):
            monitor.end_of_step(i)

    model, _ = run_recipe(model, recipe, ctx=ctx, measure_steps=False, distill_eval=monitor.evaluate, on_step_end=after)
    return model
