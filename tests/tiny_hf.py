"""Tiny seeded Hugging Face models for tests (importable from every test folder, see ``tests/conftest.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


def tiny_bert(
    hidden: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64, *, vocab: int = 50, max_len: int = 16
) -> nn.Module:
    """A ``transformers.BertModel`` built after ``torch.manual_seed(0)``, in eval mode; the calling test is
    skipped when transformers is not installed."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=max_len,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def tiny_llama(
    hidden: int, ffn: int, layers: int, heads: int, *, kv_heads: int | None = None, vocab: int, max_len: int
) -> nn.Module:
    """A random ``transformers.LlamaForCausalLM`` built after ``torch.manual_seed(0)`` (``kv_heads``: grouped-query
    attention; ``None``: as many as ``heads``); the calling test is skipped when transformers is not installed."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_len,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)
