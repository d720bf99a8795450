"""Artifacts and weight files: ts.save / ts.load, atomic folders with manifests, safe weight loading,
local Hugging Face folders (load_hf_model).

``export_onnx`` and ``export_pt2`` live in :mod:`torchslim.export` (a layer above the techniques, whose
modules they lower); ``torchslim.io.export_onnx`` still resolves to them, on first use.
"""

from typing import Any

from torchslim.io.artifact import artifact_tensor_bytes, encode_state, load, parse_safetensors, save
from torchslim.io.atomic import atomic_dir, check_output_dir, sha256_file
from torchslim.io.hf import hf_example_inputs, load_hf_model
from torchslim.io.weights import load_state_dict_file

__all__ = [
    "artifact_tensor_bytes",
    "atomic_dir",
    "check_output_dir",
    "encode_state",
    "export_onnx",
    "export_pt2",
    "hf_example_inputs",
    "load",
    "load_hf_model",
    "load_state_dict_file",
    "parse_safetensors",
    "save",
    "sha256_file",
]


def __getattr__(name: str) -> Any:
    """``export_onnx`` / ``export_pt2``, kept here for existing imports, from :mod:`torchslim.export`."""
    if name in ("export_onnx", "export_pt2"):
        import importlib

        return getattr(importlib.import_module("torchslim.export"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
