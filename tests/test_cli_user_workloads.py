"""Users' own models and workloads on the command line (issue #20, part B).

The README's "Your own model" examples are extracted from README.md by their ``readme-example``
markers and run exactly as printed, in a temporary folder that becomes the current directory.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from torchslim.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

USER_SRC = textwrap.dedent(
    '''
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader, TensorDataset

    from torchslim.workloads import Workload
    from torchslim.workloads.digits import DigitsWorkload


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


    def example_inputs():
        return (torch.randn(2, 1, 8, 8),)


    def boom():
        raise RuntimeError("kaboom in user code")


    class Tiny(Workload):
        """A tiny model with random data; its quality is agreement with its own first predictions."""

        name, metric = "", "agreement"

        def __init__(self, data=None):
            self.data = data
            gen = torch.Generator().manual_seed(0)
            self.x = {s: torch.randn(32, 1, 8, 8, generator=gen) for s in ("train", "val", "test")}

        def factory(self):
            return build()

        def model(self):
            return build().eval()

        def example_inputs(self):
            return (self.x["test"][:4],)

        def calibration(self, n_batches=8):
            return [self.x["train"][i : i + 8] for i in range(0, 32, 8)][:n_batches]

        @torch.no_grad()
        def train_data(self):
            x = self.x["train"]
            return DataLoader(TensorDataset(x, build().eval()(x).argmax(1)), batch_size=8)

        @torch.no_grad()
        def evaluate(self, model, split="test"):
            ref = build().eval()(self.x[split]).argmax(1)
            return {"agreement": (model.eval()(self.x[split]).argmax(1) == ref).float().mean().item()}


    class SpeedOnly(Tiny):
        metric = "items_per_s"
        has_quality = False


    def make_tiny():
        return Tiny()


    def make_with_data(data):
        wl = Tiny(data)
        wl.name = f"tiny@{data}"
        return wl


    TINY = Tiny()
    NOT_A_WORKLOAD = 42


    class NotAWorkload:
        pass


    def digits():
        return DigitsWorkload()
    '''
)


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- readme-example: marker -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- readme-example: {re.escape(marker)} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no code block marked {marker!r}"
    return m.group(1) + "\n"


def readme_commands(marker: str) -> list[list[str]]:
    """The ``torchslim ...`` lines of a marked README block, as argument lists (without ``torchslim``)."""
    lines = [line for line in readme_block(marker).splitlines() if line.startswith("torchslim ")]
    assert lines
    return [shlex.split(line, comments=True)[1:] for line in lines]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """``tmp_path`` as the current folder and the torchslim cache, with no stale user modules imported."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path / "cache"))
    for name in ("usermod", "mycnn"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("usermod", "mycnn"):
        sys.modules.pop(name, None)


@pytest.fixture
def usermod(in_tmp):
    """``usermod.py`` in the current folder: a factory, a tiny Workload and wrong things to name."""
    (in_tmp / "usermod.py").write_text(USER_SRC, encoding="utf-8")
    return in_tmp


# -- the README's examples, as printed ---------------------------------------------------------------


def test_readme_cnn_workload_runs_as_printed(in_tmp, capsys):
    (in_tmp / "mycnn.py").write_text(readme_block("mycnn.py"), encoding="utf-8")
    commands = readme_commands("mycnn-commands")
    assert [c[0] for c in commands] == ["measure", "compress", "export", "sensitivity"]
    for argv in commands:
        if argv[0] in ("measure", "compress"):
            argv = [*argv, "--latency-runs", "3"]  # timing repetitions only; the same command otherwise
        if argv[0] == "sensitivity":
            argv = [*argv, "--no-progress"]
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "mycnn:MyCNN" in out and "int8-static" in out
    report = json.loads((in_tmp / "out/mycnn/report.json").read_text())
    before, after = report["baseline"]["quality"]["accuracy"], report["steps"][-1]["report"]["quality"]["accuracy"]
    assert before > 0.9 and after > before - 0.05  # trained (4 classes), then calibrated int8 keeps it
    assert (in_tmp / "out/mycnn.onnx").stat().st_size > 0
    sens = json.loads((in_tmp / "out/mycnn-sens/sensitivity.json").read_text())
    assert sens["workload"] == "mycnn" and sens["split"] == "val" and len(sens["rows"]) == 3


def _tiny_bert(folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2
    )
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))


def test_readme_hf_model_runs_as_printed(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commands = readme_commands("hf-commands")
    folder = {a.split(":", 1)[1] for argv in commands for a in argv if a.startswith("hf:")}
    assert len(folder) == 1
    _tiny_bert(in_tmp / folder.pop())
    for argv in commands:
        if argv[0] in ("measure", "compress"):
            argv = [*argv, "--latency-runs", "3"]
        assert main(argv) == 0, argv
    manifest = json.loads((in_tmp / "out/my-bert/manifest.json").read_text())
    assert manifest["source"] == "hf:./my-bert"
    assert (in_tmp / "out/my-bert.onnx").stat().st_size > 0
    assert "wrote out/my-bert" in capsys.readouterr().out


# -- --model: the current folder is importable; export needs no --model afterwards ---------------------


def test_model_from_the_current_folder(usermod, capsys):
    """Was: ``cannot import 'usermod'`` (exit 2) unless PYTHONPATH=. was set."""
    assert main(["measure", "--model", "usermod:build", "--latency-runs", "2"]) == 0
    assert "usermod:build" in capsys.readouterr().out
    assert str(usermod) not in sys.path  # importable while resolving, not left on the path


def test_export_names_the_recorded_model_source(usermod, capsys):
    """Was: export required --workload or --model (argparse exit 2). The artifact records its factory, but
    running code a file names needs the user's say: export asks for that --model, then runs with it."""
    assert (
        main(["compress", "--model", "usermod:build", "--recipe", "fold-bn", "--out", "a", "--latency-runs", "2"]) == 0
    )
    assert main(["export", "a", "--format", "onnx"]) == 4
    assert "--model usermod:build" in capsys.readouterr().err
    assert main(["export", "a", "--model", "usermod:build", "--format", "onnx"]) == 0
    assert Path("a.onnx").is_file()


# -- --workload pkg.mod:NAME in every command -----------------------------------------------------------


@pytest.mark.parametrize("spec", ["usermod:Tiny", "usermod:make_tiny", "usermod:TINY"])
def test_measure_and_compress_take_a_user_workload(usermod, capsys, spec):
    """Was: exit 2 ``unknown workload`` (and every data-needing recipe exited 3 with --model)."""
    assert main(["measure", "--workload", spec, "--latency-runs", "2", "--json", "m.json"]) == 0
    assert json.loads(Path("m.json").read_text())["quality"] == {"agreement": 1.0}
    argv = ["compress", "--workload", spec, "--recipe", "int8-static", "--out", "o", "--latency-runs", "2"]
    assert main(argv) == 0  # int8-static calibrates on the workload's batches
    assert "int8-static" in capsys.readouterr().out


def test_data_needing_recipe_with_model_points_to_workload(usermod, capsys):
    """Was: exit 3 ``pass ctx=Context(calibration=...)``, which no command-line flag can do."""
    assert main(["compress", "--model", "usermod:build", "--recipe", "int8-static", "--out", "o"]) == 3
    assert "--model brings no data: give --workload pkg.mod:NAME" in capsys.readouterr().err
    assert not Path("o").exists()


def test_user_workload_factory_gets_data(usermod, capsys):
    assert main(["measure", "--workload", "usermod:make_with_data", "--data", "d1", "--latency-runs", "2"]) == 0
    assert main(["measure", "--workload", "usermod:make_tiny", "--data", "d1"]) == 2
    assert "must accept one argument (the --data path)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "spec", "message"),
    [
        ("--model", "nomodule_b20:build", "cannot import 'nomodule_b20' (ModuleNotFoundError"),
        ("--model", "usermod:nope", "module 'usermod' has no 'nope' (it defines: "),
        ("--model", "usermod:NOT_A_WORKLOAD", "is not callable"),
        ("--model", "usermod", "must look like pkg.module:NAME"),
        ("--workload", "usermod:build", "returned Sequential, not a torchslim.workloads.Workload"),
        ("--workload", "usermod:NotAWorkload", "NotAWorkload is not a torchslim.workloads.Workload subclass"),
        ("--workload", "usermod:NOT_A_WORKLOAD", "is a int, not a Workload"),
        ("--workload", "usermod:missing", "module 'usermod' has no 'missing'"),
        ("--workload", "nomodule_b20:X", "cannot import 'nomodule_b20'"),
        ("--workload", "nope", "unknown workload 'nope'"),
    ],
)
def test_model_and_workload_spec_errors_are_usage_errors(usermod, capsys, flag, spec, message):
    assert main(["measure", flag, spec]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_sensitivity_takes_a_user_workload(usermod):
    assert main(["sensitivity", "--workload", "usermod:Tiny", "--methods", "prune", "--out", "s", "--no-progress"]) == 0
    result = json.loads(Path("s/sensitivity.json").read_text())
    assert result["workload"] == "usermod:Tiny" and result["split"] == "val"  # named by its spec
    assert [r["layer"] for r in result["rows"]] == ["0", "3"]


def test_distill_takes_a_user_workload_and_student(usermod, capsys):
    src = "\n\ndef student():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
    Path("usermod.py").write_text(USER_SRC + src, encoding="utf-8")
    argv = ["distill", "--workload", "usermod:Tiny", "--student", "usermod:student", "--epochs", "2"]
    assert main([*argv, "--json", "d.json", "--out", "st"]) == 0
    result = json.loads(Path("d.json").read_text())
    assert result["workload"] == "usermod:Tiny" and result["config"]["epochs"] == 2 and result["steps"] == 8
    assert Path("st/model.safetensors").is_file()


# -- refusals and one-line errors -----------------------------------------------------------------------


def test_unexpected_exception_is_one_line_and_a_traceback_file(usermod, capsys):
    """Was: the exception escaped main() (a 70-line traceback from the console script)."""
    assert main(["measure", "--model", "usermod:boom"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    m = re.fullmatch(r"torchslim: internal error: RuntimeError: kaboom in user code \(full traceback in (.+)\)", err)
    assert m, err
    log = Path(m.group(1))
    assert log.parent == usermod / "cache" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "def boom" not in text and "in boom" in text
    assert "command: torchslim measure --model usermod:boom" in text


def test_keyboard_interrupt_still_exits_130(usermod, monkeypatch, capsys):
    import torchslim.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_measure", interrupted)
    assert main(["measure", "--model", "usermod:build"]) == 130


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
@pytest.mark.parametrize(
    "argv",
    [
        ["measure", "--model", "usermod:build"],
        ["compress", "--workload", "usermod:Tiny", "--recipe", "fold-bn", "--out", "o"],
        ["tune", "--workload", "usermod:Tiny", "--max-drop", "0.01", "--out", "t"],
        ["sensitivity", "--workload", "usermod:Tiny", "--out", "s"],
        ["distill", "--workload", "usermod:digits"],
    ],
)
def test_device_cuda_refused_at_once_without_cuda(usermod, capsys, monkeypatch, argv):
    """Was: no --device option at all."""
    import torchslim.workloads.base as base

    def no_work(*a, **k):
        raise AssertionError("work started before the device was checked")

    monkeypatch.setattr(base.Workload, "context", no_work)
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchslim: error: --device cuda: ") and "not available" in err
    assert len(err.splitlines()) == 1
    assert not Path("o").exists()


def test_device_cpu_runs_the_model_there(usermod, capsys):
    assert main(["measure", "--model", "usermod:build", "--device", "cpu", "--latency-runs", "2"]) == 0


@pytest.mark.parametrize("command", ["tune", "sensitivity"])
def test_speed_only_workloads_refused_at_once(usermod, tmp_path, capsys, monkeypatch, command):
    """Was: ``tune --workload llama-decode`` built a 542 M model and ran for minutes."""
    from torchslim.workloads.llama import LlamaDecodeWorkload

    def no_model(self):
        raise AssertionError("the model was built: the workload should have been refused first")

    monkeypatch.setattr(LlamaDecodeWorkload, "model", no_model)
    extra = ["--max-drop", "1"] if command == "tune" else []
    for spec in ("llama-decode", "usermod:SpeedOnly"):
        assert main([command, "--workload", spec, *extra, "--out", str(tmp_path / command)]) == 3
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "measures speed only" in err, err
    assert not (tmp_path / command).exists()


def test_workload_quality_rule():
    from torchslim.workloads import get_workload
    from torchslim.workloads.llama import LlamaDecodeWorkload

    assert get_workload("digits").quality_problem() is None
    assert "speed only" in LlamaDecodeWorkload().quality_problem()
    wl = get_workload("digits")
    wl.metric = ""
    assert "declares no quality metric" in wl.quality_problem()
