"""llama-decode's llama.cpp peers (GGUF writing, quantization, greedy decode) and the W4A8 row's wiring."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from torchslim.bench import llama_cpp  # noqa: E402 - after the importorskip
from torchslim.bench.harness import RowBuilder  # noqa: E402
from torchslim.bench.llama import TABLE, _llama_cpp_peer  # noqa: E402
from torchslim.workloads.llama import GreedyDecoder, LlamaDecodeWorkload, LlamaSpec, build_llama  # noqa: E402

TINY = LlamaSpec(hidden=128, intermediate=256, layers=2, heads=4, vocab=512, max_positions=128)
PROMPT = torch.tensor([[1, 5, 9, 20, 33]])


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    if llama_cpp.missing():
        pytest.skip(llama_cpp.missing())
    model = build_llama(TINY)
    return model, llama_cpp.write_gguf(model, TINY, tmp_path_factory.mktemp("gguf") / "f32.gguf")


def test_table_declares_the_w4a8_row_the_llama_cpp_peers_and_prefill() -> None:
    assert TABLE.rows.index("torchslim-int4-g128") + 1 == TABLE.rows.index("torchslim-int4-w4a8-g128")
    assert {"peer-llama.cpp-q4_0", "peer-llama.cpp-q4_k_m"} <= set(TABLE.rows)
    assert "prefill_tokens_per_s" in TABLE.columns and "torchslim-int4-w4a8-g128" in TABLE.optional


def test_f32_gguf_computes_the_same_logits_and_tokens_as_transformers(f32_gguf) -> None:
    model, path = f32_gguf
    dec = llama_cpp.LlamaCppDecoder(path, new_tokens=4, threads=1, context=64)
    try:
        with torch.no_grad():
            want = model(PROMPT).logits[0, -1]
            tokens = GreedyDecoder(model, 4)(PROMPT)
        got = dec.logits(PROMPT)
        # the q/k permutation to llama.cpp's RoPE layout: a wrong one changes the logits at O(1)
        assert float((got - want).abs().max()) < 1e-2 * float(want.abs().max())
        assert torch.equal(dec(PROMPT), tokens)
        assert dec.prefill_seconds(32) > 0
    finally:
        dec.close()


def test_q4_0_quantization_shrinks_and_reads_all_but_the_embedding_table(f32_gguf, tmp_path) -> None:
    _, path = f32_gguf
    out = llama_cpp.quantize_gguf(path, tmp_path / "q.gguf", "q4_0", threads=1)
    size = out.stat().st_size
    assert size < path.stat().st_size / 4
    read = llama_cpp.gguf_read_bytes(out)
    assert 0 < read < size  # the token table (all but one row) is not read per token
    with pytest.raises(ValueError, match="ftype"):
        llama_cpp.quantize_gguf(path, tmp_path / "x.gguf", "q3_nope")


def test_peer_rows_are_left_out_with_a_note_when_llama_cpp_is_missing(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(llama_cpp, "missing", lambda: "llama_cpp not installed (pip install 'torchslim[llamacpp]')")
    wl = LlamaDecodeWorkload(TINY, new_tokens=2, prompt_tokens=3)
    rows = RowBuilder()
    rows.add("peer-llama.cpp-q4_0", lambda: _llama_cpp_peer(None, wl, tmp_path, "q4_0", 64, 1))
    assert rows.built == [] and "torchslim[llamacpp]" in rows.notes[0]


def test_missing_names_absent_modules(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import raises ImportError
    note = llama_cpp.missing()
    assert note is not None and "llama_cpp" in note and "torchslim[llamacpp]" in note


def test_decoder_falls_back_to_no_extra_buffers_where_they_crash(f32_gguf, monkeypatch) -> None:
    # llama.cpp's AMX / repacking buffers segfault on some hosts (llama.cpp #20824): probed in a child process.
    _, path = f32_gguf
    assert llama_cpp.extra_buffers_work(path, threads=1) is True  # float32 weights take no extra buffer
    plain = llama_cpp.LlamaCppDecoder(path, new_tokens=4, threads=1, context=64)
    monkeypatch.setattr(llama_cpp, "extra_buffers_work", lambda *a, **k: False)
    fallback = llama_cpp.LlamaCppDecoder(path, new_tokens=4, threads=1, context=64, extra_buffers=None)
    try:
        assert plain.note is None and "#20824" in fallback.note
        assert torch.equal(fallback(PROMPT), plain(PROMPT))
    finally:
        plain.close()
        fallback.close()
