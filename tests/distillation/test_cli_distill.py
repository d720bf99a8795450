"""``torchslim distill`` on one process: JSON record, artifact, config file and error exit codes."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from torchslim.cli import main


def test_distill_writes_json_and_artifact(tmp_path) -> None:
    cfg = tmp_path / "kd.yaml"
    cfg.write_text("temperature: 2.0\nalpha: 0.5\nepochs: 3\n")
    out, js = tmp_path / "student", tmp_path / "run.json"
    argv = ["distill", "--workload", "digits", "--config", str(cfg), "--epochs", "1", "--lr", "0.01"]
    assert main([*argv, "--out", str(out), "--json", str(js)]) == 0
    record = json.loads(js.read_text())
    # The flag overrides the file; the file's other fields stay.
    assert record["config"]["epochs"] == 1 and record["config"]["temperature"] == 2.0
    assert (
        record["processes"] == 1 and record["parallel"] == "none" and record["steps"] == 17 == len(record["history"])
    )  # 1077 images / 64
    assert [e["step"] for e in record["evals"]] == [17] and 0.0 <= record["student"]["accuracy"] <= 1.0
    state = load_file(out / "model.safetensors")
    assert "classifier.weight" in state and (out / "manifest.json").is_file()
    assert main([*argv, "--out", str(out)]) == 7  # refuses to overwrite without --force


def test_distill_rejects_a_bad_config_with_exit_code_3(tmp_path, capsys) -> None:
    assert main(["distill", "--workload", "digits", "--temperature", "-1"]) == 3
    assert "temperature" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nbogus: 2\n")
    assert main(["distill", "--workload", "digits", "--config", str(bad)]) == 3
    assert main(["distill", "--workload", "digits", "--student", "torchslim.workloads.digits:nope"]) == 2
    capsys.readouterr()
    assert main(["distill", "--workload", "digits", "--parallel", "fsdp"]) == 3  # no process group to shard over
    assert "torchrun --nproc-per-node N" in capsys.readouterr().err
