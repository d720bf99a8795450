"""The built-in ``minilm-edge`` recipe and the ``minilm-edge`` bench table (issue #21), without training."""

from __future__ import annotations

import pytest
import torch.nn as nn

from torchslim.bench import BENCHMARKS, table
from torchslim.core.modspec import module_from_spec
from torchslim.core.structure import replay_ops
from torchslim.errors import UnsafeInputError
from torchslim.recipes import builtin_recipes
from torchslim.structured import FactorizedEmbedding


def test_minilm_edge_recipe_chains_depth_width_embedding_then_int8():
    steps = builtin_recipes()["minilm-edge"].steps
    kinds = [s.config.kind for s in steps]
    assert kinds == [
        "layer-dropping",
        "distill",
        "channel-pruning",
        "distill",
        "factorize-embedding",
        "distill",
        "int8-dynamic",
    ]
    assert steps[-1].config.compile and steps[-1].config.embeddings == "int4"
    assert steps[4].select is not None and steps[4].config.rank == 256
    # 30522 x 256 int4 codes, a float16 scale and minimum per 64 codes, the 256 x 384 int8 projection:
    # the table no longer dominates an 8 MB budget.
    group = steps[-1].config.embedding_group_size
    assert 30522 * 256 // 2 + 30522 * (256 // group) * 4 + 256 * 384 < 4.5e6


def test_minilm_edge_table_declares_the_issue_rows():
    assert "minilm-edge" in BENCHMARKS
    t = table("minilm-edge")
    assert t.rows == (
        "fp32",
        "torchslim-int8-dynamic",
        "torchslim-distill-3-layers",
        "torchslim-edge",
        "peer-onnxruntime-int8",
        "peer-torchao-int8-dynamic-compiled",
        "peer-torch-compile-bf16",
    )
    assert "speedup_b1" in t.columns and t.metrics == ("stsb_spearman", "cos_min")
    assert t.recipes["torchslim-edge"] == "minilm-edge"


def test_factorized_spec_round_trips_and_bad_replays_are_refused():
    emb = FactorizedEmbedding(100, 16, rank=4, padding_idx=0)
    back = module_from_spec({"class": "FactorizedEmbedding", **emb.torchslim_spec()})
    assert isinstance(back, FactorizedEmbedding) and back.table.weight.shape == (100, 4)
    with pytest.raises(ValueError):
        module_from_spec({"class": "FactorizedEmbedding", "num_embeddings": 100, "embedding_dim": 16})
    model = nn.Sequential(nn.Embedding(100, 16))
    for data in ({"layers": {"0": 16}}, {"layers": {"missing": 4}}, {"layers": [1]}):
        with pytest.raises(UnsafeInputError):
            replay_ops(nn.Sequential(nn.Embedding(100, 16)), [{"op": "factorize-embedding", "data": data}])
    replay_ops(model, [{"op": "factorize-embedding", "data": {"layers": {"0": 4}}}])
    assert isinstance(model[0], FactorizedEmbedding) and model[0].rank == 4


def test_batch1_column_times_one_call_per_sentence_without_inputs():
    import torch
    import torch.nn as nn

    from torchslim.bench.minilm_edge import NO_ARGS, OneByOne
    from torchslim.measure import interleaved_latency

    calls = []

    class Encoder(nn.Module):
        def forward(self, ids, mask):
            calls.append(ids.shape[1])
            return ids.float().mean(1, keepdim=True)

    sentences = [(torch.ones(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.long)) for n in (3, 7)]
    lat = interleaved_latency({"a": OneByOne(Encoder(), sentences)}, NO_ARGS, warmup=1, rounds=2)
    assert lat["a"].median_ms > 0
    assert calls == [3, 7] * 3  # warmup + 2 rounds, each sentence at its own length
