"""``torchslim bench llama-sequential``: its seeded model folders, artifact comparison, loading and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from torchslim.bench import BENCHMARKS, table  # noqa: E402
from torchslim.bench.llama_sequential import (  # noqa: E402
    IN_MEMORY,
    SEQUENTIAL,
    SMALL_SEQUENTIAL,
    in_memory_need_bytes,
    same_artifact,
)
from torchslim.bench.llama_sequential_child import artifact_factory, calibration, peak_rss_mb  # noqa: E402
from torchslim.bench.llama_sequential_model import FULL, QUICK_FULL, QUICK_SMALL, SMALL, llama_folder  # noqa: E402
from torchslim.workloads.llama import LlamaSpec  # noqa: E402


@pytest.mark.parametrize("shape", [FULL, SMALL, QUICK_SMALL])
def test_shape_params_count_the_transformers_model(shape: LlamaSpec) -> None:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(shape.config())
    assert shape.params() == sum(p.numel() for p in model.parameters())


def test_cache_folder_labels_are_unchanged() -> None:
    # the folder names of models already written under the cache (a 3 B folder takes long to rewrite)
    labels = [s.label() for s in (FULL, SMALL, QUICK_FULL, QUICK_SMALL)]
    assert labels == [
        "h3200-i8704-l26-a32-kv32-v32000",
        "h2048-i5632-l8-a16-kv16-v32000",
        "h256-i512-l4-a4-kv2-v512",
        "h128-i256-l2-a4-kv2-v256",
    ]


@pytest.mark.parametrize("shape", [FULL, SMALL, QUICK_SMALL])
def test_every_linear_width_splits_into_int4_groups_of_128(shape: LlamaSpec) -> None:
    # a Linear whose input width is not a multiple of the group is left unquantized by int4-g128
    assert shape.hidden % 128 == 0 and shape.intermediate % 128 == 0


def test_full_shape_is_a_3b_model_and_the_in_memory_preflight_counts_bf16_twice() -> None:
    assert FULL.params() >= 3_000_000_000 and 450e6 < SMALL.params() < 600e6
    assert in_memory_need_bytes(FULL) == 4 * FULL.params()


def test_folder_is_written_once_seeded_sharded_and_loads(tmp_path: Path) -> None:
    from torchslim.io import load_hf_model

    folder = llama_folder(QUICK_SMALL, root=tmp_path / "a")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == QUICK_SMALL.layers + 2  # embeddings, each block, norm and head
    assert [p.name for p in (tmp_path / "a").iterdir()] == [folder.name]  # no partial folder left
    stamp = (folder / shards[0]).stat().st_mtime_ns
    assert llama_folder(QUICK_SMALL, root=tmp_path / "a") == folder
    assert (folder / shards[0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    a = load_hf_model(folder).state_dict()
    b = load_hf_model(llama_folder(QUICK_SMALL, root=tmp_path / "b")).state_dict()
    c = load_hf_model(llama_folder(QUICK_SMALL, seed=1, root=tmp_path / "c")).state_dict()
    assert all(t.dtype == torch.bfloat16 for t in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    assert torch.equal(a["model.norm.weight"], torch.ones(QUICK_SMALL.hidden, dtype=torch.bfloat16))
    assert 0.015 < a["model.layers.0.mlp.up_proj.weight"].float().std() < 0.025


def _artifact(folder: Path, tensors: dict[str, torch.Tensor], structure: str = '{"ops":[]}') -> Path:
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "structure.json").write_text(structure)
    return folder


def test_same_artifact_compares_every_tensor_bit_for_bit(tmp_path: Path) -> None:
    w = {"a": torch.zeros(3, dtype=torch.bfloat16), "b": torch.arange(4, dtype=torch.uint8)}
    base = _artifact(tmp_path / "base", w)
    assert same_artifact(base, _artifact(tmp_path / "same", {k: v.clone() for k, v in w.items()}))
    negzero = {**w, "a": torch.tensor([0.0, -0.0, 0.0], dtype=torch.bfloat16)}  # equal values, other bits
    assert not same_artifact(base, _artifact(tmp_path / "negzero", negzero))
    assert not same_artifact(base, _artifact(tmp_path / "fewer", {"a": w["a"]}))
    assert not same_artifact(base, _artifact(tmp_path / "dtype", {**w, "b": w["b"].to(torch.int8)}))
    assert not same_artifact(base, _artifact(tmp_path / "structure", w, '{"ops":[1]}'))


def test_factory_load_decodes_as_the_default_load(tmp_path: Path) -> None:
    import torchslim as ts
    from torchslim.core.context import Context
    from torchslim.recipes import recipe_from_dict
    from torchslim.sequential import compress_sequential

    folder = llama_folder(QUICK_SMALL, root=tmp_path)
    recipe = recipe_from_dict({"name": "rtn", "steps": [{"kind": "int4-weight-only", "method": "rtn"}]})
    batches = calibration(QUICK_SMALL.vocab, 1, 8)
    compress_sequential(folder, recipe, tmp_path / "art", ctx=Context(calibration=batches), source=f"hf:{folder}")
    fast = ts.load(tmp_path / "art", factory=artifact_factory(tmp_path / "art"))
    default = ts.load(tmp_path / "art")
    ids = batches[0]["input_ids"][:, :6]
    assert all(
        torch.equal(a, b) for a, b in zip(fast.state_dict().values(), default.state_dict().values(), strict=True)
    )
    assert torch.equal(fast.model.rotary_emb.inv_freq, default.model.rotary_emb.inv_freq)
    new = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(fast.generate(ids, **new), default.generate(ids, **new))


def test_calibration_is_seeded_and_peak_rss_is_positive() -> None:
    a, b = calibration(50, 2, 8), calibration(50, 2, 8)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b, strict=True))
    assert all(int(x["input_ids"].min()) >= 3 for x in a)
    assert peak_rss_mb() > 10


def test_table_is_registered_with_the_3b_in_memory_row_optional() -> None:
    t = table("llama-sequential")
    assert "llama-sequential" in BENCHMARKS
    assert t.rows[0] == "fp32" and SEQUENTIAL == "torchslim-int4-gptq-g128-sequential"
    assert t.optional == (IN_MEMORY,) and SMALL_SEQUENTIAL in t.rows
    assert {"peak_rss_mb", "params", "build_s", "tokens_per_s", "same_artifact"} == set(t.columns)


@pytest.mark.slow
def test_quick_bench_runs_every_row_in_child_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchslim.bench import run_named_benchmark

    monkeypatch.delenv("TORCHSLIM_MAX_MODEL_BYTES", raising=False)  # the in-memory peer's preflight: memory available
    result = run_named_benchmark("llama-sequential", data=str(tmp_path), quick=True)
    rows = {r["variant"]: r for r in result.rows}
    assert list(rows) == list(table("llama-sequential").rows)
    assert rows[SMALL_SEQUENTIAL]["same_artifact"] is True
    assert rows["fp32"]["speedup"] == 1.0 and rows[SEQUENTIAL]["speedup"] is None
    assert all(r["peak_rss_mb"] > 0 and r["tokens_per_s"] > 0 for r in rows.values())
    assert rows[SEQUENTIAL]["params"] > rows["fp32"]["params"]
