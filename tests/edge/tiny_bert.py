"""A tiny BERT sentence encoder and its data for the edge-pipeline tests (importable by a subprocess)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from torchslim.workloads.minilm import SentenceEncoder

VOCAB, HIDDEN, LAYERS, HEADS, FFN = 500, 64, 4, 4, 128


def bert_encoder(
    vocab: int, hidden: int, layers: int, heads: int, ffn: int, *, max_len: int = 256, seed: int = 0,
    dropout: float = 0.0, pooler: bool = True,
) -> SentenceEncoder:  # fmt: skip
    """A seeded BERT of the given shape with mean pooling, in eval mode (the edge tests' tiny encoders)."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_len,
        initializer_range=0.2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation="sdpa",
    )
    return SentenceEncoder(BertModel(cfg, add_pooling_layer=pooler)).eval()


def tiny_encoder() -> SentenceEncoder:
    """A seeded 4-block BERT (hidden 64, 4 heads, FFN 128, vocabulary 500) with mean pooling, eval mode."""
    return bert_encoder(VOCAB, HIDDEN, LAYERS, HEADS, FFN)


def batch(n: int = 8, length: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` of ``n`` random sentences padded to ``length`` (varied lengths)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def train_data(n_batches: int = 4):
    """Callable giving the same few unlabeled batches each epoch, as 1-tuples ``(batch,)``."""
    batches = [(batch(seed=100 + i),) for i in range(n_batches)]
    return lambda: list(batches)
