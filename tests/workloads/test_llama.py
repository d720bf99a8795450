"""llama-decode: seeded shapes, greedy decode with a KV cache, bandwidth figures and the benchmark wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.errors import UsageError
from torchslim.workloads import get_workload, workload_names

pytest.importorskip("transformers")

from torchslim.workloads.llama import (  # noqa: E402 - after the importorskip
    SIZES,
    LlamaDecodeWorkload,
    LlamaSpec,
    build_llama,
    copy_bandwidth,
    decode_bytes,
)

TINY = LlamaSpec(hidden=128, intermediate=256, layers=2, heads=4, vocab=512, max_positions=128)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_and_sizes():
    assert "llama-decode" in workload_names()
    assert LlamaDecodeWorkload.metric == "tokens_per_s" and LlamaDecodeWorkload.higher_is_better
    assert 530e6 < SIZES["full"].params() < 550e6  # the reference shape
    assert SIZES["full"].params() * 4 > 2e9  # weights dominate: over 2 GB in fp32
    with pytest.raises(UsageError, match="full"):
        get_workload("llama-decode", "huge")


def test_seeded_weights_are_deterministic_and_counted():
    a, b, c = build_llama(TINY, seed=0), build_llama(TINY, seed=0), build_llama(TINY, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.up_proj.weight"], sc["model.layers.0.mlp.up_proj.weight"])
    assert sum(p.numel() for p in a.parameters()) == TINY.params()
    assert a.lm_head.weight.data_ptr() != a.model.embed_tokens.weight.data_ptr()  # untied


def test_decode_gives_the_requested_tokens_and_matches_generate():
    wl = LlamaDecodeWorkload(TINY, new_tokens=6, prompt_tokens=5)
    model = wl.model()
    (prompt,) = wl.example_inputs()
    assert prompt.shape == (1, 5)
    with torch.inference_mode():
        out = wl.decoder(model)(prompt)
        again = wl.decoder(model)(prompt)
        ref = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, 6) and out.dtype == torch.long
    assert torch.equal(out, again)
    assert torch.equal(out, ref[:, 5:])  # greedy with the KV cache = transformers' greedy generate
    assert wl.evaluate(model, runs=2)["tokens_per_s"] > 0


def test_kv_heads_default_to_heads_and_grouped_query_shapes_count_and_build():
    assert TINY.kv_heads == TINY.heads and TINY == LlamaSpec(128, 256, 2, 4, 512, 128, kv_heads=4)
    gqa = LlamaSpec(hidden=128, intermediate=256, layers=2, heads=4, vocab=512, max_positions=128, kv_heads=2)
    assert gqa.params() < TINY.params()
    model = build_llama(gqa)
    assert sum(p.numel() for p in model.parameters()) == gqa.params()
    assert model.model.layers[0].self_attn.k_proj.out_features == 2 * 128 // 4  # kv_heads x head_dim
    assert gqa.label() == "h128-i256-l2-a4-kv2-v512" and TINY.label() == "h128-i256-l2-a4-kv4-v512"
    with pytest.raises(ValueError, match="kv_heads"):
        LlamaSpec(hidden=128, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="kv_heads"):
        LlamaSpec(hidden=128, heads=4, kv_heads=0)


def test_bad_lengths_are_rejected():
    with pytest.raises(ValueError, match="prompt_tokens"):
        LlamaDecodeWorkload(TINY, new_tokens=200)
    with pytest.raises(ValueError, match="divisible"):
        LlamaSpec(hidden=100, heads=3)


def test_bandwidth_and_decode_bytes():
    assert copy_bandwidth(4 * 2**20, repeats=3) > 1e8
    m = build_llama(TINY)
    total = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    emb = m.model.embed_tokens.weight
    assert decode_bytes(total, m) == total - emb.numel() * 4 + TINY.hidden * 4
    assert decode_bytes(100, nn.Linear(2, 2)) == 100


def test_benchmark_rows_on_a_tiny_model():
    pytest.importorskip("torchslim.quantization.int4.weight_only")
    from torchslim.bench import BENCHMARKS
    from torchslim.bench.llama import TABLE, run_on

    assert "llama-decode" in BENCHMARKS
    res = TABLE.check(run_on(LlamaDecodeWorkload(TINY, new_tokens=3, prompt_tokens=4), quick=True))
    rows = {r["variant"]: r for r in res.rows}
    assert {
        "fp32",
        "torchslim-bf16",
        "torchslim-int8-weight-only",
        "torchslim-int4-g128",
        "peer-torch.ao-int8-dynamic",
    } <= set(rows)
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["bound_ms"] > 0 and r["x_bound"] > 0
    assert rows["torchslim-int4-g128"]["read_mb"] < 0.2 * rows["fp32"]["read_mb"]
    assert any("copy bandwidth" in n for n in res.notes)


def test_compiled_rows_are_declared_and_left_out_with_quick():
    from torchslim.bench.llama import TABLE, _compiled

    assert TABLE.rows.index("torchslim-int4-w4a8-g128") + 1 == TABLE.rows.index("torchslim-int4-w4a8-g128-compiled")
    assert "peer-torchao-int4-prototype-compiled" in TABLE.rows
    wl = LlamaDecodeWorkload(TINY, new_tokens=2, prompt_tokens=4)
    assert _compiled((nn.Linear(2, 2), 1), wl, 1, quick=True) is None
    assert _compiled(None, wl, 1, quick=False) is None


@pytest.mark.slow
def test_compiled_w4a8_row_computes_the_eager_logits():
    pytest.importorskip("torchslim.quantization.int4.weight_only")
    from torchslim.bench.llama import _compiled, _ours_int4

    wl = LlamaDecodeWorkload(TINY, new_tokens=2, prompt_tokens=4)
    model, size = _ours_int4(wl.model(), "int8")
    compiled, same_size = _compiled((model, size), wl, 2, quick=False)
    assert same_size == size and compiled._orig_mod is model  # wraps the eager row's model, no copy
    (x,) = wl.example_inputs()
    with torch.inference_mode():
        want = model(input_ids=x).logits.float()
        got = compiled(input_ids=x).logits.float()
    # Inductor fuses the bf16 elementwise operations and rounds once: close, not bit-equal.
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())
