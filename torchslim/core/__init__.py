"""Core abstractions: configs, registry, Select, Context, the module walker."""

from torchslim.core.config import (
    Config,
    check_fraction,
    check_positive_int,
    check_range,
    config_from_dict,
    register_config,
    registered_configs,
)
from torchslim.core.context import Context
from torchslim.core.registry import lookup, register_transform, registered_transforms
from torchslim.core.select import Select, is_compressed
from torchslim.core.walker import replace_module_, swap_modules_

__all__ = [
    "Config",
    "Context",
    "Select",
    "check_fraction",
    "check_positive_int",
    "check_range",
    "config_from_dict",
    "is_compressed",
    "lookup",
    "register_config",
    "register_transform",
    "registered_configs",
    "registered_transforms",
    "replace_module_",
    "swap_modules_",
]
