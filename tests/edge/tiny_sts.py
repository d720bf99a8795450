"""A tiny stand-in for the ``minilm-stsb`` workload: the same class and data format, a 6-block BERT of
hidden size 32 and a word-hash tokenizer, so a whole ``minilm-edge``-style recipe or a composed tune runs
in seconds (importable by the CLI as ``tiny_sts:TinyStsWorkload`` once this folder is on ``sys.path``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from tiny_bert import bert_encoder

from torchslim.workloads.minilm import MAX_LEN, MiniLMWorkload, SentenceEncoder

VOCAB, HIDDEN, LAYERS, HEADS, FFN = 300, 32, 6, 4, 64
_WORDS = "the a cat dog runs sits on mat man woman plays guitar eats food red blue car drives fast slow".split()


def write_sts(folder: Path, rows_per_split: int = 6) -> Path:
    """Write ``sts-train/dev/test.csv`` of made-up pairs (STS benchmark layout) into ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, offset in (("train", 0), ("dev", 1000), ("test", 2000)):
        lines = []
        for i in range(rows_per_split):
            pick = torch.randint(0, len(_WORDS), (2, 5), generator=g).tolist()
            a, b = (" ".join(_WORDS[j] for j in row) for row in pick)
            lines.append(f"main-captions\tMSRvid\t2012\t{offset + i}\t{i % 6}.0\t{a} {split}\t{b}")
        (folder / f"sts-{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tiny_bert_encoder(seed: int = 0, dropout: float = 0.0) -> SentenceEncoder:
    """A seeded 6-block BERT (hidden 32, 4 heads, FFN 64, vocabulary 300) with mean pooling, eval mode."""
    return bert_encoder(VOCAB, HIDDEN, LAYERS, HEADS, FFN, max_len=MAX_LEN, seed=seed, dropout=dropout, pooler=False)


class TinyStsWorkload(MiniLMWorkload):
    """``MiniLMWorkload`` on :func:`tiny_bert_encoder` and :func:`write_sts` data (no model package needed)."""

    name = "tiny-sts"

    def __init__(self, data: str | Path | None = None) -> None:
        if data is None:
            raise ValueError("TinyStsWorkload needs the folder written by write_sts")
        self.data = Path(data)
        self._rows, self._batches, self._ref = {}, {}, {}

    def factory(self) -> nn.Module:
        return tiny_bert_encoder()

    def model(self) -> nn.Module:
        return tiny_bert_encoder()

    def tokenize(self, sentences: Sequence[str], pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """[CLS]=1, then each word hashed to 2..VOCAB-1; padded with 0 to the longest (or ``pad_to``)."""
        ids = [[1] + [2 + zlib.crc32(w.encode()) % (VOCAB - 2) for w in s.split()][: MAX_LEN - 1] for s in sentences]
        width = pad_to or max(len(r) for r in ids)
        out = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, r in enumerate(ids):
            out[i, : len(r)] = torch.tensor(r[:width])
            mask[i, : len(r)] = 1
        return {"input_ids": out, "attention_mask": mask}

    def reference(self, split: str = "test") -> torch.Tensor:
        """The fp32 embeddings, computed each time (not cached on disk under the real model's key)."""
        return self.embed(self.model(), split)[1]


# A composed search space of four points on the tiny encoder, every one trains (blocks dropped, then
# distilled): 2 sets of blocks kept ("0,5" is the compress move of "0,2,5") x 2 learning rates.
SMALL_COMPOSED = {
    "keep_blocks": ("0,2,5", "0,5"),
    "head_ratio": (0.0,),
    "ffn_ratio": (0.0,),
    "depth_epochs": (1,),
    "embeddings": ("int8",),
    "distill_lr": (0.0003, 0.001),
    "groups": (),
    "int8": {"compute_dtype": "bfloat16"},  # not compiled: seconds, not minutes
}
