"""Depth reduction keeps the teacher's blocks; hidden-state, attention and embedding distillation train it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.distillation import DistillConfig, LossTerm, train_distill
from torchslim.distillation.students import drop_blocks, find_blocks, keep_every_kth_block
from torchslim.errors import ConfigError, UnsupportedModelError

transformers = pytest.importorskip("transformers")


def _bert(layers: int = 4) -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    cfg._attn_implementation = "eager"  # attention probabilities are returned only by the eager path
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


class _Encoder(nn.Module):
    """A sentence encoder: masked mean of the last hidden states, ``[B, d]``."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


def test_keep_every_kth_block_copies_the_teachers_blocks() -> None:
    teacher = _bert(6)
    student = keep_every_kth_block(teacher, 2, offset=1)
    assert find_blocks(teacher)[0] == "encoder.layer"
    assert len(student.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    assert len(teacher.encoder.layer) == 6 and teacher.config.num_hidden_layers == 6  # teacher untouched
    for s_block, t_index in zip(student.encoder.layer, (1, 3, 5), strict=True):
        for (name, p), q in zip(s_block.named_parameters(), teacher.encoder.layer[t_index].parameters(), strict=True):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name
    ids = torch.randint(0, 100, (2, 5))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 5, 32)


def test_drop_blocks_validates_its_arguments() -> None:
    with pytest.raises(ConfigError, match="strictly increasing"):
        drop_blocks(_bert(4), [2, 1])
    with pytest.raises(ConfigError, match="strictly increasing"):
        drop_blocks(_bert(4), [4])
    with pytest.raises(ConfigError, match="offset"):
        keep_every_kth_block(_bert(4), 2, offset=2)
    with pytest.raises(UnsupportedModelError, match="identical blocks"):
        find_blocks(nn.Linear(2, 2))


def test_hidden_attention_and_embedding_distillation_on_unlabeled_text() -> None:
    teacher = _Encoder(_bert(4))
    student = _Encoder(keep_every_kth_block(teacher.bert, 2, offset=1))
    gen = torch.Generator().manual_seed(0)
    batches = [
        ({"input_ids": torch.randint(0, 100, (8, 10), generator=gen), "attention_mask": torch.ones(8, 10).long()},)
        for _ in range(4)
    ]
    terms = (
        LossTerm("embedding", 1.0),
        # student block i imitates the teacher block it was copied from, shifted one up (TinyBERT's mapping)
        LossTerm("hidden", 1.0, student="bert.encoder.layer.0", teacher="bert.encoder.layer.2"),
        LossTerm("attention", 1.0, student="bert.encoder.layer.1.attention.self[1]", teacher="bert.encoder.layer.3.attention.self[1]"),
    )  # fmt: skip
    run = train_distill(
        student, teacher, lambda: batches, DistillConfig(terms=terms, epochs=6, lr=1e-3), progress=False
    )
    first, last = run.history[0], run.history[-1]
    for name in ("embedding", "hidden", "attention"):
        assert last[name] < first[name], name
