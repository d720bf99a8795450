"""``ChannelPruning``: physically remove conv channels, Linear neurons (FFN width) and attention heads.

Dependency analysis is Torch-Pruning's DependencyGraph (Fang et al., "DepGraph: Towards Any Structural
Pruning", CVPR 2023): removing output channel *i* of a layer also removes input channel *i* of every
consumer, the matching BatchNorm/LayerNorm entries, and the coupled channels across residual adds and
concatenations; such a coupled set is a *group* and is scored and pruned as one. Importance of channel
*c* in a group *G* is the mean over the group's layers of

- ``l1`` / ``l2``: the norm of the weights attached to *c*, ``‖W_c‖_p`` (Li et al., "Pruning Filters
  for Efficient ConvNets", ICLR 2017);
- ``taylor``: the first-order Taylor estimate of the loss change ``|Σ_w (∂L/∂w) · w|`` over *c*'s
  weights (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019), with
  gradients from ``ctx.train_data`` (or pseudo-labels of ``ctx.calibration`` for classifiers);
- ``activation``: the norm of *c*'s contribution to each consumer, ``‖W_{:,c}‖₂ · ‖X_c‖₂`` on calibration
  data (the structured form of Wanda, Sun et al., ICLR 2024);
- ``random``: seeded uniform scores (a baseline).

``scope="layer"`` removes ``ratio`` of every group; ``scope="global"`` ranks all groups' (mean-normalised)
scores together, so layers lose different fractions, at most ``max_layer_ratio`` each. With
``target_macs_ratio`` channels are removed in 2 % steps until the MACs fall to that fraction.

The output layer (any group that changes the model's output shape: classifier, LM head, the residual
width of a transformer) is never pruned, nor a group that meets a float model input (a residual stream
that starts at the input), and neither are ``nn.MultiheadAttention`` embeddings. With ``head_ratio > 0``
each selected ``nn.MultiheadAttention`` (``nn.TransformerEncoder``, ViT) is first replaced by an equal
:class:`~torchslim.structured.attention.PrunedMultiheadAttention` with separate q/k/v/out layers, whose
heads are then scored and removed like Hugging Face heads (the split is part of the plan). Pruning
runs on a copy; the copy's :class:`~torchslim.structured.plan.PruningPlan` is then replayed on the model
and recorded with ``record_op``, so ``ts.load`` rebuilds the shapes from JSON. A model the graph cannot
handle is refused before anything changes (:func:`~torchslim.structured.preflight.preflight`).

Example:
    >>> import torch, torch.nn as nn
    >>> from torchslim.api import compress_
    >>> from torchslim.core.context import Context
    >>> m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    >>> x = torch.randn(2, 1, 6, 6); _ = m(x)
    >>> _ = compress_(m, ChannelPruning(ratio=0.5), ctx=Context(example_inputs=(x,)))
    >>> m[0].out_channels, m[2].out_channels, m(x).shape
    (4, 4, torch.Size([2, 2]))
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core.batches import call_model
from torchslim.core.config import Config, check_fraction, check_positive_int, check_range, fail, register_config
from torchslim.core.context import Context
from torchslim.core.registry import register_transform
from torchslim.core.search import Choice, Grid, searchable
from torchslim.core.select import Select
from torchslim.core.structure import record_op
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.structured.attention import find_attention, head_attrs, split_attention_, splittable
from torchslim.structured.plan import OP, PruningPlan, items_of_group
from torchslim.structured.preflight import preflight

_MACS_STEP = 0.02  # channel fraction removed per step when aiming at a MACs target


@register_config("channel-pruning")
@dataclass(frozen=True)
class ChannelPruning(Config):
    """Remove whole channels / neurons / attention heads (a smaller dense model, faster on any hardware).

    Args:
        ratio: fraction of the channels of each prunable group to remove (``scope="layer"``) or of all
            of them (``scope="global"``); ignored when ``target_macs_ratio`` is given.
        importance: ``"l1"``, ``"l2"`` (weight norms), ``"taylor"`` (needs ``ctx.train_data`` or
            ``ctx.calibration``), ``"activation"`` (weight norm × input activation norm on
            ``ctx.calibration``, see :mod:`torchslim.structured.activation`) or ``"random"``.
        scope: ``"layer"`` (same fraction everywhere) or ``"global"`` (ranked across layers).
        round_to: keep channel counts a multiple of this (e.g. 8 for vectorised kernels).
        iterative_steps: reach the ratio in this many equal steps, scores recomputed each time.
        finetune_epochs: epochs of fine-tuning on ``ctx.train_data`` between iterative steps (0: none).
        finetune_lr: learning rate of that fine-tuning.
        target_macs_ratio: prune until MACs ≤ this fraction of the original (0.5 = 2× fewer MACs).
        head_ratio: fraction of attention heads to remove in supported attention blocks, Hugging Face
            ones and ``nn.MultiheadAttention`` (see :mod:`torchslim.structured.attention`). With
            ``ratio=0`` only heads are removed.
        max_layer_ratio: no group loses more than this fraction (matters for global scope).
        taylor_batches: batches of data used for Taylor gradients or activation statistics.

    Raises:
        ConfigError: invalid values, or the context lacks what the options need.
        UnsupportedModelError: the model has modules the dependency graph cannot handle (all listed).
    """

    ratio: float = searchable(0.5, Grid(0.0625, 0.875, 0.03125, name="channel_ratio"))
    importance: Literal["l1", "l2", "taylor", "activation", "random"] = "l2"
    scope: Literal["layer", "global"] = "layer"
    round_to: int | None = searchable(None, Choice((1, 8, 32), name="channel_round_to", unset=1))
    iterative_steps: int = 1
    finetune_epochs: int = 0
    finetune_lr: float = 1e-3
    target_macs_ratio: float | None = None
    head_ratio: float = 0.0
    max_layer_ratio: float = 0.9
    taylor_batches: int = 8

    def __post_init__(self) -> None:
        check_fraction(self, "ratio")
        check_fraction(self, "head_ratio")
        check_range(self, "max_layer_ratio", 0.0, 1.0, low_open=True, high_open=True)
        check_positive_int(self, "iterative_steps")
        check_positive_int(self, "taylor_batches")
        check_range(self, "finetune_lr", 0.0, 1.0, low_open=True)
        if self.round_to is not None:
            check_positive_int(self, "round_to")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            fail(self, "finetune_epochs", f"must be an integer >= 0, got {self.finetune_epochs!r}")
        if self.target_macs_ratio is not None:
            check_range(self, "target_macs_ratio", 0.0, 1.0, low_open=True, high_open=True)
            if self.head_ratio > 0:
                fail(self, "head_ratio", "cannot be combined with target_macs_ratio; give ratio and head_ratio")
            if self.iterative_steps != 1:
                fail(self, "iterative_steps", "target_macs_ratio already prunes in small steps; leave it at 1")


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "activation":
        from torchslim.structured.activation import ActivationNormImportance

        return ActivationNormImportance()
    return tp.importance.RandomImportance()


def _pruner_class() -> type:
    """Torch-Pruning's ``BasePruner``, with channel groups that every grouped conv of a group can keep.

    A coupled group (say a residual stream read by convs with ``groups=4`` and ``groups=3``) is pruned
    symmetrically in ``k`` equal slices, so each layer keeps a multiple of ``k`` channels. Torch-Pruning
    takes ``k`` as the *largest* of the layers' group counts (4, leaving 3 with an impossible width); the
    least common multiple (12) suits all of them. Every count divides the channel number, so the lcm does.
    """
    import torch_pruning as tp

    class _Pruner(tp.pruner.BasePruner):
        def _get_channel_groups(self, group: Any) -> int:
            counts = []
            for dep, _ in group:
                table = (
                    self.out_channel_groups
                    if self.DG.is_out_channel_pruning_fn(dep.handler)
                    else self.in_channel_groups
                )
                if dep.target.module in table:
                    counts.append(table[dep.target.module])
            return math.lcm(*counts) if counts else 1

    return _Pruner


def _unsplittable(module: nn.Module) -> bool:
    """A grouped conv Torch-Pruning cannot prune: one group per input *or* output channel, but not both.

    Depth multipliers (``Conv2d(24, 48, groups=24)``) and their converse are read as depthwise (input
    and output channels removed together) or give index errors; their channels are left as they are.
    Depthwise (``in == out == groups``) and other grouped convs are pruned.

    Example:
        >>> _unsplittable(nn.Conv2d(8, 16, 3, groups=8)), _unsplittable(nn.Conv2d(8, 8, 3, groups=8))
        (True, False)
    """
    if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
        return False
    depthwise = module.groups == module.in_channels == module.out_channels
    return not depthwise and module.groups in (module.in_channels, module.out_channels)


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


def _loss(model: nn.Module, inputs: Any, target: Any) -> torch.Tensor:
    """The loss whose gradients Taylor importance uses: cross-entropy for class ids, MSE for float targets."""
    out = call_model(model, inputs)
    if isinstance(out, torch.Tensor) and isinstance(target, torch.Tensor):
        if out.dim() == 2 and not target.is_floating_point() and target.dim() == 1:
            return F.cross_entropy(out, target)
        if target.is_floating_point() and target.shape == out.shape:
            return F.mse_loss(out, target)
    raise ConfigError(
        "taylor importance needs (inputs, class ids) or (inputs, float targets shaped like the output) batches; "
        "use importance='l2' for this model"
    )


def _taylor_batches(model: nn.Module, ctx: Context, n: int) -> Iterator[tuple[Any, Any]]:
    if ctx.train_data is not None:
        for i, (inputs, target) in enumerate(ctx.train_data()):
            if i >= n:
                return
            yield inputs, target
        return
    if not ctx.calibration:
        raise ConfigError("taylor importance needs ctx.train_data or ctx.calibration batches")
    for batch in list(ctx.calibration)[:n]:
        with torch.no_grad():  # pseudo-labels: the unpruned model's own predictions
            out = call_model(model, batch)
        if not (isinstance(out, torch.Tensor) and out.dim() == 2):
            raise ConfigError("taylor importance on calibration data needs a classifier ([batch, classes] logits)")
        yield batch, out.argmax(-1)


def _accumulate_grads(model: nn.Module, ctx: Context, n: int) -> None:
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()  # BatchNorm running statistics and dropout stay as they are
    with torch.enable_grad():
        for inputs, target in _taylor_batches(model, ctx, n):
            _loss(model, inputs, target).backward()
    model.train(was_training)


class _Session:
    """One pruning run on a working copy: the Torch-Pruning pruner, the protected layers, the plan so far."""

    def __init__(self, work: nn.Module, config: ChannelPruning, select_names: set[str], ctx: Context) -> None:

        self.work, self.config, self.ctx = work, config, ctx
        names = {m: n for n, m in work.named_modules()}
        roots = (nn.modules.conv._ConvNd, nn.Linear)
        ignored = [m for m, n in names.items() if isinstance(m, roots) and n not in select_names]
        found = find_attention(work)
        self.specs = found if config.head_ratio > 0 else []
        if not self.specs:
            # Without head pruning the q/k/v widths (heads x head size, reshaped by the attention) stay whole.
            ignored += [p for s in found for p in s.projections if p not in ignored]
        heads = {p: s.num_heads for s in self.specs for p in s.projections}
        outputs: list[Any] = []

        leaves: list[torch.Tensor] = []

        def forward_fn(model: nn.Module, inputs: Any) -> Any:
            # Float inputs get a grad history so the graph shows which ops read them (see _protect).
            inputs = tuple(
                t.detach().requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in (inputs if isinstance(inputs, (tuple, list)) else (inputs,))
            )
            leaves.extend(t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad)
            out = _flat_tensors(call_model(model, inputs))  # tensors only: HF outputs may carry cache objects
            outputs.append(out)
            return out

        if config.target_macs_ratio is not None:
            ratio, steps = config.max_layer_ratio, math.ceil(config.max_layer_ratio / _MACS_STEP)
        else:
            ratio, steps = config.ratio, config.iterative_steps
        if ratio == 0 and self.specs:
            # Heads only: Torch-Pruning nests head removal inside its width pass, which a zero ratio skips
            # (it removed no heads). Every other root is ignored instead, so only the attention groups
            # remain, and their width follows the heads (prune_head_dims=False).
            projections = {id(p) for s in self.specs for p in s.projections}
            ignored += [m for m in names if isinstance(m, roots) and id(m) not in projections and m not in ignored]
            ratio = config.head_ratio
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about bare parameters it handles itself
            try:
                self.pruner = _pruner_class()(
                    work,
                    ctx.example_inputs,
                    importance=_importance(config.importance),
                    global_pruning=config.scope == "global",
                    pruning_ratio=ratio,
                    max_pruning_ratio=config.max_layer_ratio,
                    iterative_steps=steps,
                    ignored_layers=ignored,
                    round_to=config.round_to,
                    num_heads=heads,
                    prune_num_heads=bool(heads),
                    prune_head_dims=False,  # head size stays: attention reshapes by it
                    head_pruning_ratio=config.head_ratio,
                    forward_fn=forward_fn,
                )
            except UnsupportedModelError:
                raise
            except Exception as e:  # noqa: BLE001 - any tracing failure means the graph can't handle the model
                raise UnsupportedModelError(
                    f"Torch-Pruning could not trace the model on ctx.example_inputs: {type(e).__name__}: {e}"
                ) from e
        self.out_shapes = [tuple(t.shape) for t in _flat_tensors(outputs[0])]
        self._protect(outputs[0], leaves, names)
        self.groups: list[list[dict[str, Any]]] = []

    def _protect(self, out: Any, inputs: list[torch.Tensor], names: dict[nn.Module, str]) -> None:
        """Leave alone every group that reaches the model output or input, an nn.MultiheadAttention embedding
        or a grouped conv Torch-Pruning cannot split (:func:`_unsplittable`)."""
        from torch_pruning import ops

        dg = self.pruner.DG
        out_fns = {t.grad_fn for t in _flat_tensors(out) if t.grad_fn is not None}
        input_ids = {id(t) for t in inputs}

        def reads_input(dep: Any) -> bool:
            # The channel meets a model input where an op (a residual add, the first layer's input side)
            # reads the input tensor directly; the input's width cannot change.
            inside = dep.target.module in names or dep.target.type == ops.OPTYPE.PARAMETER
            if inside and dep.handler.__name__ != "prune_in_channels":
                return False
            nexts = getattr(dep.target.grad_fn, "next_functions", ())
            return any(id(getattr(f, "variable", None)) in input_ids for f, _ in nexts if f is not None)

        protected = []
        roots = self.pruner.root_module_types
        for group in dg.get_all_groups(ignored_layers=self.pruner.ignored_layers, root_module_types=roots):
            # A channel reaches the output when a node whose *output* loses it (not a consumer's input
            # side, such as the classifier's in_features) produces a model output.
            reaches_output = any(
                dep.handler.__name__ == "prune_out_channels"
                and (dep.target.grad_fn in out_fns or dep.target.type == ops.OPTYPE.OUTPUT)
                for dep, _ in group
            )
            if (
                reaches_output
                or any(reads_input(dep) for dep, _ in group)
                or any(isinstance(dep.target.module, nn.MultiheadAttention) for dep, _ in group)
                or any(_unsplittable(dep.target.module) for dep, _ in group)
            ):
                outs = [dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)]
                protected += [m for m in outs if isinstance(m, nn.Module)]
        self.pruner.ignored_layers.extend(protected)
        self.protected = sorted({names[m] for m in protected if m in names})

    def step(self) -> int:
        """One Torch-Pruning step; the groups it pruned are appended to the plan. Returns their number."""
        dg = self.pruner.DG
        if self.config.importance == "taylor":
            _accumulate_grads(self.work, self.ctx, self.config.taylor_batches)
        elif self.config.importance == "activation":
            batches = list(self.ctx.calibration or [])[: self.config.taylor_batches] or [self.ctx.example_inputs]
            self.pruner.importance.collect(self.work, batches)
        self._fix_head_schedule()
        n = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed + self.pruner.current_step)  # random importance is seeded
            for group in self.pruner.step(interactive=True):
                self.groups.append(items_of_group(group, dg._module2name, dg._param_to_name))
                group.prune()
                n += 1
        self.work.zero_grad(set_to_none=True)
        PruningPlan(attrs=self.attrs()).apply_(self.work)  # head counts follow every step (fine-tuning runs it)
        return n

    def _fix_head_schedule(self) -> None:
        """Make per-layer head pruning cumulative over iterative steps.

        Torch-Pruning removes ``ceil(r_k · current heads)`` heads per layer at step k, with r_k the
        cumulative ratio, so steps compound (4 heads at 50 % in two steps leaves 1). We set this step's
        ratio so the total removed after step k is ``ceil(r_k · original heads)``.
        """
        if not self.specs or self.config.scope != "layer":
            return
        spec = self.specs[0]
        k = self.pruner.current_step + 1  # Torch-Pruning increments the step before pruning
        target = math.ceil(self.config.head_ratio * k / self.pruner.iterative_steps * spec.num_heads - 1e-9)
        current = spec.projections[0].out_features // spec.head_size  # pruned in place: the current width
        todo = target - (spec.num_heads - current)
        self.pruner.per_step_head_pruning_ratio[k] = (todo - 0.5) / current if todo > 0 else 0.0

    def attrs(self) -> dict[str, dict[str, Any]]:
        """Attribute patches (attention head counts) that the work copy's current widths call for."""
        return head_attrs(self.work, self.specs)

    def run(self) -> None:
        cfg = self.config
        if cfg.target_macs_ratio is None:
            for i in range(cfg.iterative_steps):
                self.step()
                if cfg.finetune_epochs and i + 1 < cfg.iterative_steps:
                    self._finetune()
            return
        from torchslim.measure.macs import count_macs

        target = cfg.target_macs_ratio * count_macs(self.work, self.ctx.example_inputs)
        for _ in range(self.pruner.iterative_steps):
            if count_macs(self.work, self.ctx.example_inputs) <= target:
                return
            self.step()
        self.ctx.record(f"channel-pruning: MACs target {cfg.target_macs_ratio} not reached at max_layer_ratio")

    def _finetune(self) -> None:
        from torchslim.training import fit_

        assert self.ctx.train_data is not None
        fit_(
            self.work,
            self.ctx.train_data,
            epochs=self.config.finetune_epochs,
            lr=self.config.finetune_lr,
            seed=self.ctx.seed,
            desc="fine-tuning between pruning steps",
        )

    def check_outputs(self) -> None:
        """The pruned copy must run and give outputs of the original shapes (else nothing is changed)."""
        try:
            with torch.no_grad():
                shapes = [tuple(t.shape) for t in _flat_tensors(call_model(self.work, self.ctx.example_inputs))]
        except Exception as e:  # noqa: BLE001
            raise UnsupportedModelError(
                f"the pruned model no longer runs ({type(e).__name__}: {e}); model left unchanged"
            ) from e
        if shapes != self.out_shapes:
            raise UnsupportedModelError(
                f"pruning changed the output shapes {self.out_shapes} -> {shapes}; model left unchanged"
            )


def _split_selected_(work: nn.Module, names: set[str]) -> list[str]:
    """Split every selected ``nn.MultiheadAttention`` of ``work`` (it or its ``out_proj`` selected); their paths."""
    paths = [n for n, m in work.named_modules() if n and splittable(m) and (n in names or f"{n}.out_proj" in names)]
    split_attention_(work, paths)
    return paths


def _head_count(model: nn.Module) -> int:
    return sum(s.num_heads for s in find_attention(model))


@register_transform(ChannelPruning, scope="model")
def _channel_pruning(model: nn.Module, config: ChannelPruning, select: Select, ctx: Context) -> nn.Module:
    if ctx.example_inputs is None:
        raise ConfigError("channel-pruning needs ctx.example_inputs to trace the model's dependency graph")
    if config.finetune_epochs and config.iterative_steps > 1 and ctx.train_data is None:
        raise ConfigError("channel-pruning finetune_epochs needs ctx.train_data")
    preflight(model)
    was_training = model.training
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    before = sum(p.numel() for p in model.parameters())
    work = copy.deepcopy(model)
    names = {n for n, _ in select.modules(model)}
    split = _split_selected_(work, names) if config.head_ratio > 0 else []
    names |= {f"{p}.{c}" for p in split for c in ("q_proj", "k_proj", "v_proj", "out_proj")}  # the new layers
    heads_before = _head_count(work) if config.head_ratio > 0 else 0
    session = _Session(work, config, names, ctx)
    session.run()
    attrs = session.attrs()
    session.check_outputs()

    plan = PruningPlan(groups=tuple(tuple(g) for g in session.groups if g), attrs=attrs, split_attention=tuple(split))
    plan.apply_(model)
    model.load_state_dict(work.state_dict())  # equal after a plain replay; carries fine-tuning between steps
    for n, p in model.named_parameters():
        p.requires_grad_(requires_grad.get(n, True))
    model.train(was_training)
    record_op(model, OP, plan.to_dict())
    after = sum(p.numel() for p in model.parameters())
    kept = ", ".join(session.protected) if session.protected else "none"
    heads = f", attention heads {heads_before} -> {_head_count(model)}" if heads_before else ""
    ctx.record(
        f"channel-pruning: pruned {len(plan.groups)} group(s), params {before} -> {after}{heads}; "
        f"output-coupled layers kept: {kept}"
    )
    return model
