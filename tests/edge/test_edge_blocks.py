"""Building blocks of the composed MiniLM-edge pipeline (issue #21), on a tiny BERT encoder.

Factorized embeddings (exact at full rank, saved and reloaded exactly), int8 on pruned shapes compiled
equal to eager, distillation of a student whose depth and widths changed, and the chained recipe
(drop blocks → distil → prune heads/FFN → distil → factorize the table → distil → int8 compiled)
reloading bit-identically in a fresh process.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.api import compress_
from torchslim.core.select import Select
from torchslim.distillation import DistillConfig, LossTerm, drop_blocks, train_distill
from torchslim.quantization import Int8Dynamic
from torchslim.recipes import recipe_from_dict, run_recipe
from torchslim.structured import ChannelPruning, FactorizedEmbedding, FactorizeEmbedding

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tiny_bert import HIDDEN, VOCAB, batch, tiny_encoder, train_data  # noqa: E402

WORDS = Select(include=(r"word_embeddings$",))


def _ctx(**kw) -> ts.Context:
    b = batch()
    return ts.Context(
        example_inputs=(b["input_ids"], b["attention_mask"]),
        calibration=[(x["input_ids"], x["attention_mask"]) for x in (batch(seed=s) for s in (1, 2))],
        **kw,
    )


def test_factorized_table_is_the_svd_and_keeps_every_row():
    m = tiny_encoder()
    table = m.bert.embeddings.word_embeddings.weight.detach().clone()
    compress_(m, FactorizeEmbedding(rank=16), select=WORDS)
    emb = m.bert.embeddings.word_embeddings
    assert isinstance(emb, FactorizedEmbedding) and emb.table.num_embeddings == VOCAB
    dense = emb.proj(emb.table.weight).detach()
    s = torch.linalg.svdvals(table.double())
    # Eckart–Young: the rank-16 error in Frobenius norm is the norm of the dropped singular values.
    assert abs(float((dense - table).double().norm()) - float(s[16:].norm())) < 1e-4
    assert torch.equal(dense[0], torch.zeros(HIDDEN))  # the padding row stays zero


def test_factorize_skips_tables_it_would_not_shrink():
    m = tiny_encoder()
    compress_(m, FactorizeEmbedding(rank=32))  # 32·(2+64) ≥ 2·64 for the 2-row token-type table
    assert type(m.bert.embeddings.token_type_embeddings) is nn.Embedding
    assert isinstance(m.bert.embeddings.word_embeddings, FactorizedEmbedding)


def test_factorized_int8_model_reloads_exactly(tmp_path):
    m = tiny_encoder()
    ctx = _ctx()
    compress_(m, FactorizeEmbedding(rank=16), select=WORDS, ctx=ctx)
    compress_(m, Int8Dynamic(), ctx=ctx)
    kinds = {type(x).__name__ for x in m.bert.embeddings.word_embeddings.children()}
    assert kinds == {"Int8Embedding", "Int8DynamicLinear"}
    ts.save(m, tmp_path / "a")
    back = ts.load(tmp_path / "a", tiny_encoder)
    b = batch(seed=7)
    assert torch.equal(back(**b), m(**b))
    sd, sd2 = m.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_distil_student_with_fewer_blocks_and_pruned_widths():
    teacher = tiny_encoder().requires_grad_(False)
    student = drop_blocks(teacher, [0, 3]).requires_grad_(True)
    compress_(student, ChannelPruning(ratio=0.5, head_ratio=0.5, importance="activation"), ctx=_ctx())
    assert student.bert.encoder.layer[0].intermediate.dense.out_features < 128
    b = batch(seed=9)

    def gap(model: nn.Module) -> float:  # distance of the last hidden states (the pooled ones start close)
        with torch.no_grad():
            s, t = (x.bert(**b).last_hidden_state for x in (model, teacher))
        return float((s - t).pow(2).mean())

    before = gap(student)
    terms = (
        LossTerm("embedding", 1.0),
        LossTerm("hidden", 1.0, student="bert.encoder.layer.0", teacher="bert.encoder.layer.0"),
        LossTerm("hidden", 1.0, student="bert.encoder.layer.1", teacher="bert.encoder.layer.3"),
    )
    config = DistillConfig(terms=terms, epochs=4, lr=1e-3, batch_size=8)
    run = train_distill(student, teacher, train_data(3), config)
    after = gap(run.student.eval())
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_compiled_int8_on_pruned_shapes_matches_eager():
    m = drop_blocks(tiny_encoder(), [0, 2, 3])
    ctx = _ctx()
    compress_(m, ChannelPruning(ratio=0.5, head_ratio=0.5, importance="activation"), ctx=ctx)
    compress_(m, FactorizeEmbedding(rank=16), select=WORDS, ctx=ctx)
    # The same quantization twice (deterministic from the same calibration), once compiled.
    compiled = compress_(
        copy.deepcopy(m), Int8Dynamic(smoothquant=0.5, compute_dtype="bfloat16", compile=True), ctx=ctx
    )
    eager = compress_(m, Int8Dynamic(smoothquant=0.5, compute_dtype="bfloat16"), ctx=ctx)
    sd, sd2 = eager.state_dict(), compiled.state_dict()
    assert all(torch.equal(sd[k], sd2["_orig_mod." + k] if "_orig_mod." + k in sd2 else sd2[k]) for k in sd)
    for seed, length in ((3, 16), (4, 40)):  # two shapes: the compiled graph handles another length
        b = batch(length=length, seed=seed)
        with torch.no_grad():
            want, got = eager(**b).float(), compiled(**b).float()
        assert float(nn.functional.cosine_similarity(want, got).min()) > 0.999


RECIPE = {
    "name": "tiny-edge",
    "steps": [
        {"kind": "layer-dropping", "indices": [1, 2]},
        {"kind": "distill", "terms": [{"loss": "embedding"}], "epochs": 2, "lr": 1e-3, "batch_size": 8},
        {"kind": "channel-pruning", "ratio": 0.5, "head_ratio": 0.5, "importance": "activation"},
        {"kind": "distill", "terms": [{"loss": "embedding"}], "epochs": 2, "lr": 1e-3, "batch_size": 8},
        {"kind": "factorize-embedding", "rank": 16, "select": {"include": ["word_embeddings$"]}},
        {"kind": "distill", "terms": [{"loss": "embedding"}], "epochs": 2, "lr": 1e-3, "batch_size": 8},
        {
            "kind": "int8-dynamic",
            "smoothquant": 0.5,
            "compute_dtype": "bfloat16",
            "compile": True,
            "embeddings": "int4",
            "embedding_group_size": 16,
        },  # int4 rows, as the minilm-edge recipe
    ],
}

RELOAD = """
import sys, torch, torchslim as ts
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from tiny_bert import batch, tiny_encoder
m = ts.load(sys.argv[2], tiny_encoder)
with torch.no_grad():
    out = m(**batch(seed=11))
torch.save({"out": out, "state": m.state_dict()}, sys.argv[3])
"""


@pytest.mark.slow
def test_chained_recipe_reloads_bit_identically_in_fresh_process(tmp_path):
    # Dynamo marks shapes dynamic per code object once another test called an encoder at a second
    # length; start clean so this process compiles as the fresh one does (static shapes first).
    torch._dynamo.reset()
    recipe = recipe_from_dict(RECIPE)
    model, _ = run_recipe(tiny_encoder(), recipe, ctx=_ctx(train_data=train_data()))
    assert len(model.bert.encoder.layer) == 2
    assert isinstance(model.bert.embeddings.word_embeddings, FactorizedEmbedding)
    assert type(model.bert.embeddings.word_embeddings.table).__name__ == "Int4Embedding"
    # One thread on both sides: kernels split reductions by thread count, which moves the last bits.
    # Inductor fixes that split when it generates code, so compile again at one thread here (the
    # recipe's measurements compiled the model at the process's thread count).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            want = model(**batch(seed=11))
    finally:
        torch.set_num_threads(before)
    ts.save(model, tmp_path / "edge", recipe=recipe)
    env = {**os.environ, "PYTHONPATH": str(Path(ts.__file__).resolve().parents[1])}
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(HERE), str(tmp_path / "edge"), str(tmp_path / "out.pt")],
        check=True,
        env=env,
        timeout=600,
    )
    got = torch.load(tmp_path / "out.pt")
    state = model.state_dict()
    assert state.keys() == got["state"].keys()
    assert all(torch.equal(state[k], got["state"][k]) for k in state)
    # Bit-identical outputs: this failed while the distill steps left float32 gradients on parameters
    # that the bf16 step then cast (Dynamo broke the graph at each of them in this process only).
    assert torch.equal(got["out"], want), float((got["out"] - want).abs().max())
