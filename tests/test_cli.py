from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchslim.cli import main

MODEL_SRC = textwrap.dedent(
    """
    import torch, torch.nn as nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))

    def example_inputs():
        return (torch.randn(2, 1, 8, 8),)

    def not_a_model():
        return 42
    """
)


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg_cli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(MODEL_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userpkg_cli.m:build"


def test_help_and_usage_errors_exit_2():
    out = subprocess.run([sys.executable, "-m", "torchslim", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "examples:" in out.stdout and "bench" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "torchslim", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_recipes_lists_builtins(capsys, tmp_path):
    assert main(["recipes", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "fold-bn" in out
    assert "default" in json.loads((tmp_path / "r.json").read_text())


def test_unknown_recipe_name_exit_2_lists_valid(user_model, tmp_path, capsys):
    code = main(["compress", "--model", user_model, "--recipe", "nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "built-in recipes: " in err and "default" in err
    assert not (tmp_path / "o").exists()


def test_unknown_workload_exit_2(capsys):
    assert main(["measure", "--workload", "imagenet"]) == 2
    assert "digits" in capsys.readouterr().err


def test_missing_weights_file_exit_2(user_model, tmp_path, capsys):
    assert main(["measure", "--model", user_model, "--weights", str(tmp_path / "none.safetensors")]) == 2


def test_bad_recipe_exit_3_lists_every_problem(user_model, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - kind: cast-dtype\n    dtype: int3\n    extra: 1\n")
    code = main(["compress", "--model", user_model, "--recipe", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 3
    assert "steps[0].dtype" in err and "steps[0].extra: unknown key" in err and "Traceback" not in err


def test_non_empty_out_exit_7_untouched(user_model, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious").write_text("keep")
    code = main(["compress", "--model", user_model, "--recipe", "fold-bn", "--out", str(out)])
    assert code == 7 and "--force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["precious"]


def test_compress_writes_artifact_and_force_replaces(user_model, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["compress", "--model", user_model, "--recipe", "fold-bn-bf16", "--out", str(out), "--latency-runs", "2"]
    assert main([*args, "--json", str(tmp_path / "c.json")]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "recipe.yaml",
        "report.json",
        "structure.json",
    ]
    sd = load_file(str(out / "model.safetensors"))
    assert sd["0.weight"].dtype == torch.bfloat16 and "1.running_mean" not in sd
    report = json.loads((tmp_path / "c.json").read_text())
    assert [s["kind"] for s in report["steps"]] == ["fold-batchnorm", "cast-dtype"]
    assert report["diff"]["size_ratio"] < 0.6
    assert main([*args, "--force"]) == 0


def test_measure_with_weights_and_mismatch_exit_4(user_model, tmp_path, capsys):
    from userpkg_cli.m import build

    good = tmp_path / "w.safetensors"
    save_file(build().state_dict(), str(good))
    assert (
        main(
            [
                "measure",
                "--model",
                user_model,
                "--weights",
                str(good),
                "--latency-runs",
                "2",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    rep = json.loads((tmp_path / "m.json").read_text())
    assert rep["params"] == 4 * 9 + 4 + 8 + 144 * 3 + 3 and rep["macs"] == 36 * 36 + 432
    wrong = tmp_path / "x.safetensors"
    save_file({"nope": torch.zeros(1)}, str(wrong))
    assert main(["measure", "--model", user_model, "--weights", str(wrong)]) == 4
    assert "missing: 0.weight" in capsys.readouterr().err


def test_factory_not_returning_module_exit_2(user_model, capsys):
    assert main(["measure", "--model", user_model.replace("build", "not_a_model")]) == 2
    assert main(["measure", "--model", "no_such_pkg_xyz.m:f"]) == 2


def test_demo_prints_before_after_with_real_accuracy(tmp_path, capsys):
    assert main(["demo", "--latency-runs", "3", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "accuracy" in out and "result:" in out
    run = json.loads((tmp_path / "d.json").read_text())
    assert run["baseline"]["quality"]["accuracy"] >= 0.97
    assert run["steps"] and all(s["report"]["latency_ms"] > 0 for s in run["steps"])
    assert run["baseline"]["macs"] > 0 and run["baseline"]["size_bytes"] > 0


def test_bench_digits_writes_schema(tmp_path, capsys):
    assert main(["bench", "digits", "--quick", "--json", str(tmp_path / "b.json")]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["benchmark"] == "digits" and data["torch"] == torch.__version__
    rows = {r["variant"]: r for r in data["rows"]}
    assert rows["fp32"]["speedup"] == 1.0 and rows["fp32"]["quality"]["accuracy"] >= 0.97
    assert {"torchslim-bf16", "peer-torch-autocast-bf16"} <= set(rows)
    for r in rows.values():
        assert r["latency_ms"] > 0 and set(r) >= {"variant", "latency_ms", "speedup", "size_mb", "quality"}
    assert rows["torchslim-bf16"]["size_mb"] < 0.55 * rows["fp32"]["size_mb"]
    assert abs(rows["torchslim-bf16"]["quality"]["accuracy"] - rows["fp32"]["quality"]["accuracy"]) <= 0.01
