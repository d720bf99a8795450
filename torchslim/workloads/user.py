"""Users' own models and workloads named on the command line: ``pkg.mod:NAME`` and ``hf:DIR``.

``--workload pkg.mod:NAME`` names a :class:`~torchslim.workloads.Workload` subclass, instance, or
zero-argument factory returning one; a plain name (``digits``) is a built-in workload.
``--model pkg.mod:factory`` names a callable building an ``nn.Module`` (its module may define
``example_inputs()``), and ``--model hf:DIR`` a local Hugging Face folder. As with ``python -m``, the
current directory is importable, so a ``mycnn.py`` beside the command is ``mycnn:NAME``.

Every problem is a :class:`~torchslim.errors.UsageError` (exit 2) naming the spec and what is wrong.

Example:
    >>> resolve_workload("digits").name
    'digits'
    >>> resolve_workload("torchslim.workloads.digits:DigitsWorkload").metric
    'accuracy'
    >>> resolve_workload("torchslim.workloads.digits:build_student")
    Traceback (most recent call last):
    ...
    torchslim.errors.UsageError: --workload torchslim.workloads.digits:build_student returned DigitsStudent, not a torchslim.workloads.Workload
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torchslim.errors import UsageError
from torchslim.io.source import HF_PREFIX, cwd_importable
from torchslim.workloads.base import Workload

__all__ = [
    "import_target",
    "is_user_spec",
    "resolve_model_factory",
    "resolve_workload",
]


def is_user_spec(spec: str) -> bool:
    """Whether ``spec`` names user code (``pkg.mod:NAME``) rather than a built-in name.

    Example:
        >>> is_user_spec("mycnn:MyCNN"), is_user_spec("digits")
        (True, False)
    """
    return ":" in spec and not spec.startswith(HF_PREFIX)


def import_target(spec: str, flag: str) -> tuple[ModuleType, Any]:
    """``(module, attribute)`` named by ``spec`` = ``pkg.module:NAME``; the current directory is importable.

    Args:
        spec: ``pkg.module:NAME``.
        flag: the option that gave it (``--model``), used in error messages.

    Raises:
        UsageError: a malformed spec, a module that fails to import (its error is shown), a missing attribute.

    Example:
        >>> module, fn = import_target("torchslim.workloads.digits:build_student", "--model")
        >>> fn.__name__
        'build_student'
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not attr.isidentifier():
        raise UsageError(f"{flag} must look like pkg.module:NAME, got {spec!r}")
    with cwd_importable():
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 (a user module may raise anything while importing)
            detail = str(e).splitlines()[0] if str(e) else ""
            raise UsageError(
                f"{flag} {spec}: cannot import {module_name!r} ({type(e).__name__}: {detail}); "
                f"run from the folder that holds it or add that folder to PYTHONPATH"
            ) from None
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
        raise UsageError(f"{flag} {spec}: module {module_name!r} has no {attr!r} (it defines: {', '.join(public)})")
    return module, getattr(module, attr)


def _call(obj: Callable[..., Any], data: str | Path | None, spec: str) -> Any:
    """``obj(data)`` when a data path was given, else ``obj()``; a wrong signature is a UsageError."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have none: just call
        signature = None
    args = () if data is None else (data,)
    if signature is not None:
        try:
            signature.bind(*args)
        except TypeError:
            need = "one argument (the --data path)" if args else "no arguments"
            raise UsageError(f"--workload {spec}: {getattr(obj, '__name__', obj)} must accept {need}") from None
    return obj(*args)


def resolve_workload(spec: str, data: str | Path | None = None) -> Workload:
    """The workload named by ``spec``: a built-in name, or ``pkg.mod:NAME`` for user code.

    ``NAME`` may be a :class:`Workload` subclass (instantiated), an instance, or a factory returning one.
    The class or factory is called with no argument, or with ``data`` when a data path is given. A
    workload without a ``name`` is named by its spec.

    Raises:
        UsageError: an unknown built-in name, an import failure, a missing attribute, or something that
            is not a Workload.
    """
    if not is_user_spec(spec):
        from torchslim.workloads import get_workload

        return get_workload(spec, data=data)
    _, obj = import_target(spec, "--workload")
    if isinstance(obj, Workload):
        wl = obj
    elif inspect.isclass(obj) and not issubclass(obj, Workload):
        raise UsageError(f"--workload {spec}: {obj.__name__} is not a torchslim.workloads.Workload subclass")
    elif callable(obj):
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            raise UsageError(f"--workload {spec}: {obj.__name__} does not define {missing}")
        wl = _call(obj, data, spec)
        if not isinstance(wl, Workload):
            raise UsageError(f"--workload {spec} returned {type(wl).__name__}, not a torchslim.workloads.Workload")
    else:
        raise UsageError(f"--workload {spec} is a {type(obj).__name__}, not a Workload, subclass or factory")
    if not wl.name:
        wl.name = spec
    return wl


def resolve_model_factory(spec: str) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
    """``(factory, example_inputs)`` for ``--model``: ``pkg.mod:factory`` or ``hf:DIR``.

    ``example_inputs`` gives the module's ``example_inputs()`` as a tuple (for ``hf:``, the folder's
    keyword inputs as a dict), or is None when the module defines none. Nothing is built yet.

    Raises:
        UsageError: a malformed spec, an import failure, or an attribute that is not callable.
    """
    if spec.startswith(HF_PREFIX):
        return _hf_factory(spec)
    module, factory = import_target(spec, "--model")
    if not callable(factory):
        raise UsageError(
            f"--model {spec}: {type(factory).__name__} is not callable; name a function building the model"
        )
    example = getattr(module, "example_inputs", None)
    return factory, (lambda: tuple(example())) if callable(example) else None


def _hf_factory(spec: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``--model hf:DIR``: the local transformers folder loaded offline by :mod:`torchslim.io.hf`, and its
    keyword example inputs (``input_ids``, ``attention_mask``)."""
    folder = spec[len(HF_PREFIX) :]
    if not folder:
        raise UsageError("--model hf:DIR needs a folder, e.g. hf:./my-bert")
    if not Path(folder).is_dir():
        raise UsageError(f"--model {spec}: no folder {folder!r}")
    from torchslim.io import hf

    def factory() -> Any:
        return hf.load_hf_model(folder)

    def example() -> Any:
        return hf.hf_example_inputs(folder)

    return factory, example
