"""Artifacts and weight files: atomic folders with manifests, safe weight loading."""

from torchslim.io.atomic import atomic_dir, check_output_dir, sha256_file
from torchslim.io.weights import load_state_dict_file

__all__ = ["atomic_dir", "check_output_dir", "load_state_dict_file", "sha256_file"]
