"""Sequential (block-by-block) compression writes the artifact the in-memory path writes, byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_hf import tiny_llama  # noqa: E402

import torchslim as ts  # noqa: E402
from torchslim.cli import main  # noqa: E402
from torchslim.core.context import Context  # noqa: E402
from torchslim.errors import UnsupportedModelError  # noqa: E402
from torchslim.io import load_hf_model, save  # noqa: E402
from torchslim.recipes import recipe_from_dict, run_recipe  # noqa: E402
from torchslim.sequential import compress_sequential  # noqa: E402

VOCAB = 128
STEPS = {
    "rtn": [{"kind": "int4-weight-only", "group_size": 32, "method": "rtn"}],
    "gptq": [{"kind": "int4-weight-only", "group_size": 32, "method": "gptq"}],
    "wanda": [{"kind": "wanda-pruning", "sparsity": 0.5}],
    "sparsegpt+int4": [
        {"kind": "sparsegpt-pruning", "sparsity": 0.5},
        {"kind": "int4-weight-only", "group_size": 32, "method": "awq"},
    ],
}
SAME_FILES = ("model.safetensors", "structure.json", "config.json", "recipe.yaml")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaMA (4 blocks, hidden 64) saved as several safetensors shards."""
    folder = tmp_path_factory.mktemp("llama") / "hf"
    tiny_llama(64, 128, 4, 4, kv_heads=2, vocab=VOCAB, max_len=64).save_pretrained(folder, max_shard_size="100KB")
    assert len(list(folder.glob("*.safetensors"))) > 2
    return folder


def _calibration() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(0, VOCAB, (1, 12), generator=g),
            "attention_mask": torch.ones(1, 12, dtype=torch.long),
        }
        for _ in range(2)
    ]


def _in_memory(folder: Path, recipe, out: Path) -> None:
    model, _ = run_recipe(load_hf_model(folder), recipe, Context(calibration=_calibration()), measure_steps=False)
    save(model, out, recipe=recipe, report={}, seed=recipe.seed, source=f"hf:{folder}")


def _assert_same_artifact(a: Path, b: Path) -> None:
    for name in SAME_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _tokens(artifact: Path) -> torch.Tensor:
    ids = _calibration()[0]["input_ids"][:1, :6]
    return ts.load(artifact).generate(ids, max_new_tokens=6, do_sample=False)


@pytest.mark.parametrize(
    "name",
    [
        "rtn",
        "wanda",
        pytest.param("gptq", marks=pytest.mark.slow),
        pytest.param("sparsegpt+int4", marks=pytest.mark.slow),
    ],
)
def test_sequential_artifact_is_the_in_memory_one(llama: Path, tmp_path: Path, name: str) -> None:
    recipe = recipe_from_dict({"name": name, "steps": STEPS[name]})
    _in_memory(llama, recipe, tmp_path / "memory")
    run = compress_sequential(
        llama, recipe, tmp_path / "seq", ctx=Context(calibration=_calibration()), source=f"hf:{llama}"
    )
    assert run.blocks == 4
    _assert_same_artifact(tmp_path / "memory", tmp_path / "seq")
    assert torch.equal(_tokens(tmp_path / "seq"), _tokens(tmp_path / "memory"))


def test_activations_on_disk_give_the_same_artifact(llama: Path, tmp_path: Path) -> None:
    recipe = recipe_from_dict({"name": "wanda", "steps": STEPS["wanda"]})
    ctx = Context(calibration=_calibration())
    compress_sequential(llama, recipe, tmp_path / "ram", ctx=ctx)
    run = compress_sequential(llama, recipe, tmp_path / "new" / "disk", ctx=ctx, activation_limit_bytes=0)
    assert run.activations_on_disk > 0
    _assert_same_artifact(tmp_path / "ram", tmp_path / "new" / "disk")


def _recipe_file(tmp_path: Path, steps: list[dict]) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"name": "r", "steps": steps}), encoding="utf-8")  # JSON is YAML
    return str(path)


def test_cli_sequential_equals_cli_in_memory_and_prints_a_line_per_block(
    llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "plain")
    recipe = _recipe_file(tmp_path, STEPS["rtn"])
    common = ["compress", "--model", f"hf:{llama}", "--recipe", recipe, "--latency-runs", "1"]
    assert main([*common, "--out", str(tmp_path / "memory")]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "seq"), "--sequential"]) == 0
    err = capsys.readouterr().err
    assert [f"block {i}/4 done" in err for i in range(1, 5)] == [True] * 4
    peaks = [float(m) for m in re.findall(r"peak memory ([0-9.]+) GB", err)]
    assert len(peaks) == 5 and peaks == sorted(peaks) and peaks[0] > 0  # each block and the head; never falls
    _assert_same_artifact(tmp_path / "memory", tmp_path / "seq")


def test_cli_goes_sequential_when_the_model_does_not_fit(
    llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHSLIM_MAX_MODEL_BYTES", "100000")  # the tiny model needs ~1 MB in float32
    argv = ["compress", "--model", f"hf:{llama}", "--recipe", _recipe_file(tmp_path, STEPS["rtn"])]
    assert main([*argv, "--out", str(tmp_path / "auto")]) == 0
    err = capsys.readouterr().err
    assert "compressing it block by block (--sequential)" in err
    assert json.loads((tmp_path / "auto" / "report.json").read_text())["sequential"]["blocks"] == 4


def test_calibrated_recipe_without_data_is_the_same_config_error(
    llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compress", "--model", f"hf:{llama}", "--recipe", _recipe_file(tmp_path, STEPS["gptq"]), "--sequential"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 3
    assert "calibration" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unsupported_architecture_exits_5_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    argv = ["compress", "--model", f"hf:{tmp_path / 'gpt2'}", "--recipe", _recipe_file(tmp_path, STEPS["rtn"])]
    assert main([*argv, "--out", str(tmp_path / "out"), "--sequential"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ties its output head" in err[0]


@pytest.mark.parametrize(
    ("step", "why"),
    [
        ({"kind": "int8-dynamic"}, "not block-local"),
        ({"kind": "magnitude-pruning", "sparsity": 0.5}, "scope 'global'"),
        ({"kind": "int4-weight-only", "select": {"types": ["Linear", "Embedding"]}}, None),
    ],
)
def test_unsupported_steps_are_refused_before_any_work(
    llama: Path, tmp_path: Path, step: dict, why: str | None
) -> None:
    recipe = recipe_from_dict({"name": "r", "steps": [step]})
    with pytest.raises(UnsupportedModelError, match=why):
        compress_sequential(llama, recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sequential_needs_an_hf_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "--workload", "digits", "--recipe", "bf16", "--out", str(tmp_path / "o"), "--sequential"]
    assert main(argv) == 2
    assert "--sequential needs --model hf:DIR" in capsys.readouterr().err
