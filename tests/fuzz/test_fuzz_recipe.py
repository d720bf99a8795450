"""Fuzz ``load_recipe`` on recipe files: mutated built-in recipes, generated YAML/JSON documents,
deeply nested and alias-expanding ("billion laughs") YAML."""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from torchslim.errors import ConfigError, UnsafeInputError
from torchslim.recipes import load_recipe

pytestmark = pytest.mark.fuzz
FUZZ = settings.get_profile("torchslim-fuzz")

BUILTIN = resources.files("torchslim.recipes") / "builtin"
VALID = sorted(e.read_text(encoding="utf-8").encode() for e in BUILTIN.iterdir() if e.name.endswith(".yaml"))
KEYS = st.sampled_from(["name", "steps", "kind", "select", "seed", "description", "sparsity", "dtype", "ratio", "x"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
DOC = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _load(text: bytes, suffix: str = ".yaml"):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"recipe{suffix}"
        path.write_bytes(text)
        return load_recipe(path)


@FUZZ
@given(data=st.data(), valid=st.sampled_from(VALID))
def test_load_recipe_mutated(data, valid, mutate, refused_or_ok):
    refused_or_ok(_load, mutate(data, valid))


@FUZZ
@given(doc=DOC, as_json=st.booleans())
def test_load_recipe_generated(doc, as_json, refused_or_ok):
    text = json.dumps(doc) if as_json else yaml.safe_dump(doc)
    refused_or_ok(_load, text.encode(), ".json" if as_json else ".yaml")


@FUZZ
@given(steps=st.lists(st.dictionaries(KEYS, SCALARS | DOC, max_size=5), max_size=3))
def test_load_recipe_generated_steps(steps, refused_or_ok):
    refused_or_ok(_load, yaml.safe_dump({"name": "fuzz", "steps": steps}).encode())


def test_deeply_nested_recipe_is_refused():
    # Found by this targeted input: PyYAML's recursive composer raised RecursionError on 100,000 nested lists.
    with pytest.raises(ConfigError, match="nested"):
        _load(b"[" * 100_000 + b"]" * 100_000)


def test_billion_laughs_recipe_is_refused_quickly():
    # Found by this targeted input: nine levels of nine aliases (9**9 leaves) made the error message 2 GB long.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["steps: [*a8]"]
    with pytest.raises(UnsafeInputError, match="expands to more than"):
        _load("\n".join(lines).encode())


def test_recursive_alias_recipe_is_refused():
    with pytest.raises(UnsafeInputError, match="expands to more than"):
        _load(b"name: loop\nsteps: &s [*s]\n")
