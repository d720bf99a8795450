"""Tiny seeded Hugging Face models for tests (importable from every test folder, see ``tests/conftest.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


def tiny_bert(hidden: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64, *, vocab: int = 50) -> nn.Module:
    """A ``transformers.BertModel`` (16 positions) built after ``torch.manual_seed(0)``, in eval mode; the
    calling test is skipped when transformers is not installed."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()
