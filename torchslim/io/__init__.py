"""Artifacts and weight files: ts.save / ts.load, atomic folders with manifests, safe weight loading,
local Hugging Face folders (load_hf_model)."""

from torchslim.io.artifact import artifact_tensor_bytes, encode_state, load, parse_safetensors, save
from torchslim.io.atomic import atomic_dir, check_output_dir, sha256_file
from torchslim.io.export import export_onnx, export_pt2
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
