"""``PruningPlan``: the JSON record of what structural pruning removed, replayable on a freshly built model.

A plan is an ordered list of *groups*; each group is what one Torch-Pruning ``Group.prune()`` did: a list
of items ``{"module": path, "fn": "out"|"in", "dim": d, "size": n, "keep": [kept indices]}`` (or
``{"param": path, ...}`` for a bare ``nn.Parameter``), plus integer attribute patches such as
``{"encoder.layer.0.attention.self": {"num_attention_heads": 6, "all_head_size": 192}}``, and the paths
of ``nn.MultiheadAttention`` modules first split into separate q/k/v/out layers (``split_attention``,
see :func:`~torchslim.structured.attention.split_attention_`) so their heads can be pruned. Replaying calls
Torch-Pruning's own per-layer pruning functions with the same indices in the same order, so on a fresh
model it rebuilds the exact shapes (the weights are then loaded from safetensors) and on the original
trained model it reproduces the pruned weights bit for bit. No tracing and no example inputs are needed.

Example:
    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> plan = PruningPlan(groups=(({"module": "0", "fn": "out", "dim": -1, "size": 3, "keep": [0, 2]},
    ...                             {"module": "2", "fn": "in", "dim": -1, "size": 3, "keep": [0, 2]}),))
    >>> _ = plan.apply_(m)
    >>> m[0].out_features, m[2].in_features
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from torchslim.core.structure import register_replay, structure_ops
from torchslim.errors import UnsafeInputError
from torchslim.structured.attention import split_attention_

OP = "prune-channels"
# Attribute patches may only set plain numbers on attributes that already hold one of the same type:
# a plan is data, it must never be able to install arbitrary objects on a model.
_PATCHABLE = (int, float, bool)


def _pruner_for(module: Any) -> Any:
    """Torch-Pruning's registered pruning functions for ``module`` (a layer or an ``nn.Parameter``)."""
    from torch_pruning import ops
    from torch_pruning.pruner.function import PrunerBox

    pruner = PrunerBox.get(ops.module2type(module))
    if pruner is None:
        raise UnsafeInputError(f"no Torch-Pruning pruner for {type(module).__name__}")
    return pruner


def _size(pruner: Any, target: Any, fn: str) -> int | None:
    return pruner.get_out_channels(target) if fn == "out" else pruner.get_in_channels(target)


def _resolve_param(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Parameter]:
    parent_name, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    param = parent._parameters.get(leaf)
    if param is None:
        raise AttributeError(path)
    return parent, leaf, param


def _target_of(model: nn.Module, item: dict[str, Any]) -> tuple[Any, tuple[nn.Module, str] | None]:
    """The layer (or bare parameter, with its parent and attribute name) a plan item names."""
    try:
        if "param" in item:
            parent, leaf, param = _resolve_param(model, item["param"])
            return param, (parent, leaf)
        return model.get_submodule(item["module"]), None
    except AttributeError:
        raise UnsafeInputError(
            f"pruning plan names {item.get('module', item.get('param'))!r}, not in this model"
        ) from None


def apply_item_(model: nn.Module, item: dict[str, Any], pruner: Any = None) -> None:
    """Prune one layer (or bare parameter) as a plan item says; raise UnsafeInputError if it does not fit.

    ``pruner`` is the Torch-Pruning pruning-function object to use (default: the one for the layer as it
    is now). A plan passes the one chosen *before* any of its items ran, as Torch-Pruning binds it when it
    builds its graph: a grouped conv pruned down to ``out_channels == groups`` would otherwise be taken for
    a depthwise conv, whose input pruning also removes outputs.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 3))
        >>> apply_item_(m, {"module": "0", "fn": "out", "dim": -1, "size": 3, "keep": [1]})
        >>> m[0].weight.shape
        torch.Size([1, 4])
    """
    _check_item(item)
    fn, dim, keep = item["fn"], item["dim"], item["keep"]
    target, owner = _target_of(model, item)
    pruner = pruner if pruner is not None else _pruner_for(target)
    pruner.pruning_dim = dim  # Torch-Pruning keeps the dimension on the (shared) pruner object
    size = item["size"]
    current = _size(pruner, target, fn)
    if size is not None and current is not None and current != size:
        where = item.get("module", item.get("param"))
        raise UnsafeInputError(f"pruning plan expects {where} to have {size} channels ({fn}), it has {current}")
    if size is None:
        size = current
    if size is None or any(k >= size for k in keep):
        raise UnsafeInputError(f"pruning plan item {str(item)[:120]} does not fit the model")
    kept = set(keep)
    removed = [i for i in range(size) if i not in kept]
    if not removed:
        return
    result = getattr(pruner, "prune_out_channels" if fn == "out" else "prune_in_channels")(target, removed)
    if owner is not None:  # Torch-Pruning returns a new, smaller Parameter for bare parameters
        setattr(owner[0], owner[1], result)


def _check_item(item: Any) -> None:
    ok = isinstance(item, dict) and (("module" in item) ^ ("param" in item))
    ok = ok and set(item) == {"module" if "module" in item else "param", "fn", "dim", "size", "keep"}
    ok = ok and isinstance(item.get("module", item.get("param")), str) and item["fn"] in ("out", "in")
    ok = ok and isinstance(item["dim"], int) and (item["size"] is None or isinstance(item["size"], int))
    keep = item.get("keep") if isinstance(item, dict) else None
    ok = ok and isinstance(keep, list) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in keep)
    ok = ok and keep == sorted(set(keep))
    if not ok:
        raise UnsafeInputError(f"malformed pruning plan item: {str(item)[:200]}")


def patch_attrs_(model: nn.Module, attrs: dict[str, dict[str, Any]]) -> None:
    """Set numeric attributes (head counts, sizes) on modules; refuses anything but numbers on existing numbers.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> m[0].heads = 4
        >>> patch_attrs_(m, {"0": {"heads": 2}})
        >>> m[0].heads
        2
    """
    if not isinstance(attrs, dict):
        raise UnsafeInputError("pruning plan 'attrs' must be a mapping")
    for path, values in attrs.items():
        try:
            module = model.get_submodule(path) if path else model
        except AttributeError:
            raise UnsafeInputError(f"pruning plan patches {path!r}, not in this model") from None
        if not isinstance(values, dict):
            raise UnsafeInputError(f"pruning plan attrs for {path!r} must be a mapping")
        for name, value in values.items():
            old = getattr(module, name, None) if isinstance(name, str) and not name.startswith("_") else None
            if not isinstance(old, _PATCHABLE) or type(value) is not type(old):
                raise UnsafeInputError(f"pruning plan may not set {path}.{name} to {value!r}")
            setattr(module, name, value)


@dataclass(frozen=True)
class PruningPlan:
    """What one structural pruning run removed: ordered groups of plan items and attribute patches.

    Args:
        groups: one tuple of items per pruned Torch-Pruning group, in the order they were pruned.
        attrs: module path -> ``{attribute: new number}`` patched after pruning (e.g. head counts).
        split_attention: paths of ``nn.MultiheadAttention`` modules replaced by an equal
            ``PrunedMultiheadAttention`` before the groups run (their heads are among the groups).

    Example:
        >>> PruningPlan.from_dict({"groups": [], "attrs": {}}).removed()
        0
    """

    groups: tuple[tuple[dict[str, Any], ...], ...] = ()
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    split_attention: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"groups": [list(g) for g in self.groups], "attrs": self.attrs}
        if self.split_attention:  # only when used: plans without it stay as they were written before
            data["split_attention"] = list(self.split_attention)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PruningPlan:
        """Validate plain JSON data into a plan; UnsafeInputError on anything malformed."""
        if not isinstance(data, dict) or set(data) - {"groups", "attrs", "split_attention"}:
            raise UnsafeInputError(f"malformed pruning plan: {str(data)[:200]}")
        groups = data.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise UnsafeInputError("pruning plan 'groups' must be a list of lists")
        for g in groups:
            for item in g:
                _check_item(item)
        split = data.get("split_attention", [])
        if not isinstance(split, list) or not all(isinstance(p, str) for p in split):
            raise UnsafeInputError("pruning plan 'split_attention' must be a list of module paths")
        return cls(
            groups=tuple(tuple(g) for g in groups), attrs=dict(data.get("attrs", {})), split_attention=tuple(split)
        )

    @classmethod
    def of(cls, model: nn.Module) -> list[PruningPlan]:
        """The plans recorded on ``model`` by structural pruning, oldest first."""
        return [cls.from_dict(op["data"]) for op in structure_ops(model) if op["op"] == OP]

    def apply_(self, model: nn.Module) -> nn.Module:
        """Replay the plan on ``model`` in place (attention splits, groups in order, attribute patches); returns it."""
        split_attention_(model, self.split_attention)
        # Pruning functions are chosen on the model as the plan found it (as Torch-Pruning's graph did),
        # not per item: shapes change along the way and with them what a conv looks like.
        pruners = {
            item["module"]: _pruner_for(_target_of(model, item)[0])
            for group in self.groups
            for item in group
            if "module" in item
        }
        for group in self.groups:
            for item in group:
                apply_item_(model, item, pruners.get(item.get("module")))
        patch_attrs_(model, self.attrs)
        return model

    def removed(self) -> int:
        """Number of channel slices removed (summed over every item of every group)."""
        return sum((it["size"] or len(it["keep"])) - len(it["keep"]) for g in self.groups for it in g)


def items_of_group(group: Any, module_names: dict[Any, str], param_names: dict[Any, str]) -> list[dict[str, Any]]:
    """Plan items for a Torch-Pruning ``Group`` (before it is pruned); dummy ops (add, cat, view) are skipped.

    Args:
        group: a ``torch_pruning`` Group whose items hold the indices to remove.
        module_names: module -> qualified name (``DependencyGraph._module2name``).
        param_names: bare parameter -> qualified name (``DependencyGraph._param_to_name``).
    """
    from torch_pruning import _helpers, ops

    items: list[dict[str, Any]] = []
    # Sizes as they will be when each item runs: a layer touched twice in one group shrinks in between.
    sizes: dict[tuple[int, str], int | None] = {}
    for dep, idxs in group:
        target = dep.target
        fn = "out" if dep.handler.__name__ == "prune_out_channels" else "in"
        if target.type == ops.OPTYPE.PARAMETER:
            key, name = "param", param_names.get(target.module)
        else:
            key, name = "module", module_names.get(target.module)
        if name is None:  # a traced op such as add/cat/view: nothing to store
            continue
        removed = set(_helpers.to_plain_idxs(idxs) if idxs and isinstance(idxs[0], _helpers._HybridIndex) else idxs)
        pruner = _pruner_for(target.module)
        pruner.pruning_dim = target.pruning_dim
        slot = (id(target.module), fn)
        size = sizes[slot] if slot in sizes else _size(pruner, target.module, fn)
        if size is None:
            raise UnsafeInputError(f"cannot record pruning of {name}: its channel count is unknown")
        sizes[slot] = size - len(removed)
        keep = [i for i in range(size) if i not in removed]
        items.append({key: name, "fn": fn, "dim": int(target.pruning_dim), "size": size, "keep": keep})
    return items


def plan_ops(models: Sequence[nn.Module]) -> list[list[dict[str, Any]]]:
    """The ``prune-channels`` structure ops of each model (for tests and reports)."""
    return [[op for op in structure_ops(m) if op["op"] == OP] for m in models]


@register_replay(OP)
def _replay_prune_channels(model: nn.Module, data: dict[str, Any]) -> nn.Module:
    return PruningPlan.from_dict(data).apply_(model)
