"""Memory preflight (issue #22): the available-memory readers, the estimate, the refusal, the CLI hooks,
and the estimate against the peak resident memory a real run reaches (a subprocess, ``VmHWM`` reset before the run)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from torchslim.errors import ConfigError, MemoryPreflightError
from torchslim.measure.memlimit import Available, available_memory, cgroup_room, parse_meminfo, parse_size
from torchslim.measure.memory import (
    MemoryEstimate,
    activation_profile,
    estimate_compress,
    estimate_distill,
    fp32_bytes,
    hessian_bytes,
    preflight,
)

# -- available memory ---------------------------------------------------------------------------------


def test_parse_size_units_and_refusal():
    assert parse_size("2G") == 2 * 2**30
    assert parse_size("300 MB") == 300 * 2**20
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("123") == 123
    with pytest.raises(ConfigError, match="TORCHSLIM_MEMORY_LIMIT='lots' is not a size"):
        parse_size("lots")


def test_meminfo_and_cgroup_room():
    assert parse_meminfo("MemTotal:  100 kB\nMemFree: 5 kB\nMemAvailable:  64 kB\n") == 64 * 1024
    assert parse_meminfo("MemTotal: 100 kB\n") is None
    assert cgroup_room("max\n", "5\n") is None
    assert cgroup_room("9223372036854771712\n", "5\n") is None  # cgroup v1 "unlimited"
    assert cgroup_room("1000\n", "1500\n") == 0


def _fake_proc(tmp_path, cgroup_line: str, mem_available_kb: int):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {mem_available_kb} kB\n")
    return proc


def test_cgroup_v2_limit_of_an_ancestor_applies(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHSLIM_MEMORY_LIMIT", raising=False)
    proc = _fake_proc(tmp_path, "0::/job/step\n", mem_available_kb=8 * 2**20)
    root = tmp_path / "cg"
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "step" / "memory.current").write_text("100\n")
    (root / "job" / "memory.max").write_text(f"{3 * 2**30}\n")
    (root / "job" / "memory.current").write_text(f"{2**30}\n")
    got = available_memory(proc, root)
    assert got.bytes == 2 * 2**30 and "memory.max" in got.source


def test_cgroup_v1_limit_and_meminfo_take_the_smaller(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHSLIM_MEMORY_LIMIT", raising=False)
    proc = _fake_proc(tmp_path, "4:memory:/ns-hidden\n1:cpu:/\n", mem_available_kb=1024)
    root = tmp_path / "cg"
    (root / "memory").mkdir(parents=True)  # the recorded path is not under the mount: the root is read
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text("0\n")
    assert available_memory(proc, root) == Available(1024 * 1024, "MemAvailable")
    (proc / "meminfo").write_text("MemAvailable: 99999999 kB\n")
    assert available_memory(proc, root).bytes == 2**30


def test_env_override_and_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_MEMORY_LIMIT", "512M")
    assert available_memory(tmp_path / "none", tmp_path / "none") == Available(512 * 2**20, "TORCHSLIM_MEMORY_LIMIT")
    monkeypatch.delenv("TORCHSLIM_MEMORY_LIMIT")
    assert available_memory(tmp_path / "none", tmp_path / "none") is None


# -- the estimate ---------------------------------------------------------------------------------------


def mlp(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10)).eval()


def test_activation_profile_counts_leaf_outputs_and_linear_inputs():
    p = activation_profile(mlp(16, 2), example_inputs=(torch.ones(4, 16),))
    # outputs: 4 Linear/ReLU of [4, 16] and the head [4, 10]; Linear inputs: three of [4, 16]
    assert (p.rows, p.outputs, p.linear_inputs, p.tokens) == (4, 4 * (4 * 16 * 4) + 4 * 10 * 4, 3 * 4 * 16 * 4, 4)
    assert p.scaled(8) == 2 * p.outputs
    assert activation_profile(mlp(16, 1)).outputs == 0


def test_hessian_part_grows_with_the_widest_layer_and_without_sequential():
    narrow, wide = mlp(64, 2), mlp(256, 2)
    steps = [Int4Gptq()]
    small = estimate_compress(narrow, steps, example_inputs=(torch.ones(2, 64),)).parts["hessians"]
    large = estimate_compress(wide, steps, example_inputs=(torch.ones(2, 256),)).parts["hessians"]
    assert large > 10 * small
    one_pass = estimate_compress(wide, [Int4Gptq(sequential=False)], example_inputs=(torch.ones(2, 256),))
    assert one_pass.parts["hessians"] > large
    assert hessian_bytes([]) == 0


class Int4Gptq:
    """A step config as the estimate reads it (kind and fields), without the quantization package."""

    kind = "int4-weight-only"
    method = "gptq"

    def __init__(self, sequential: bool = True) -> None:
        self.sequential = sequential


class Wanda:
    kind = "wanda-pruning"


def test_estimate_names_the_step_that_dominates_and_its_hint():
    model = mlp(128, 2)
    est = estimate_compress(model, [Int4Gptq()], example_inputs=(torch.ones(2, 128),), hf=True)
    assert "--sequential" in est.hint
    est = estimate_compress(model, [Int4Gptq()], example_inputs=(torch.ones(2, 128),))
    assert "sequential: true" in est.hint and "--sequential" not in est.hint
    assert est.parts["serialise"] == 4 * fp32_bytes(model) and est.parts["copy"] == fp32_bytes(model)
    sparse = estimate_compress(model, [Int4Gptq(), Wanda()], example_inputs=(torch.ones(2, 128),))
    assert sparse.parts["serialise"] == 6 * fp32_bytes(model)  # the sparse encoder's working copies
    d = estimate_distill(mlp(64, 4), mlp(64, 1), (torch.ones(2, 64),), batch_size=1024)
    assert d.parts["activations"] > d.parts["training"] and "--batch-size" in d.hint


# -- the refusal ----------------------------------------------------------------------------------------


def test_preflight_refuses_with_estimate_available_and_hint(monkeypatch):
    monkeypatch.delenv("TORCHSLIM_NO_PREFLIGHT", raising=False)
    est = MemoryEstimate({"copy": 3 * 2**30, "hessians": 2**30}, "fewer calibration batches")
    with pytest.raises(MemoryPreflightError) as e:
        preflight(est, "compress", Available(2**30, "cgroup memory.max 1.0 GiB"))
    msg = str(e.value)
    assert e.value.exit_code == 5 and "\n" not in msg
    assert "compress needs about 4.0 GiB more memory" in msg and "1.0 GiB is available" in msg
    assert "fewer calibration batches" in msg and "--no-preflight" in msg
    preflight(est, "compress", Available(5 * 2**30, "test"))  # fits: no error
    monkeypatch.setenv("TORCHSLIM_NO_PREFLIGHT", "1")
    preflight(est, "compress", Available(1, "test"))  # turned off


USER_SRC = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    from torchslim.workloads import Workload


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


    build_student = build


    class Tiny(Workload):
        name, metric = "tiny", "score"

        def __init__(self, data=None):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(32, 32, generator=g)

        def factory(self):
            return build()

        def model(self):
            return build().eval()

        def example_inputs(self):
            return (self.x[:8],)

        def calibration(self, n_batches=8):
            return [(self.x[:8],)]

        def train_data(self):
            return [(self.x[:8], torch.zeros(8, dtype=torch.long))]

        def evaluate(self, model, split="test"):
            return {"score": 1.0}
    """
)


@pytest.mark.parametrize(
    "argv",
    [
        ["compress", "--workload", "memuser:Tiny", "--recipe", "int8-dynamic"],
        ["compress", "--model", "memuser:build", "--recipe", "int8-weight-only"],
        ["distill", "--workload", "memuser:Tiny", "--epochs", "1"],
        ["tune", "--workload", "memuser:Tiny", "--max-drop", "0.1", "--trials", "1"],
    ],
    ids=["compress", "compress-model", "distill", "tune"],
)
def test_cli_refuses_before_the_work_with_exit_5(argv, tmp_path, monkeypatch, capsys):
    from torchslim.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "memuser", raising=False)
    (tmp_path / "memuser.py").write_text(USER_SRC, encoding="utf-8")
    monkeypatch.setenv("TORCHSLIM_MEMORY_LIMIT", "1K")
    monkeypatch.delenv("TORCHSLIM_NO_PREFLIGHT", raising=False)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 5
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"torchslim: error: {argv[0]} needs about ") and "\n" not in err
    assert "1.0 KiB is available (TORCHSLIM_MEMORY_LIMIT)" in err and "--no-preflight" in err
    assert not out.exists()
    sys.modules.pop("memuser", None)


def test_no_preflight_flag_on_every_long_command():
    from torchslim.cli import build_parser

    parser = build_parser()
    for argv in (
        ["compress", "--workload", "digits", "--recipe", "default", "--out", "o"],
        ["distill", "--workload", "digits"],
        ["tune", "--workload", "digits", "--max-drop", "0.01", "--out", "o"],
    ):
        assert parser.parse_args([*argv, "--no-preflight"]).no_preflight
        assert not parser.parse_args(argv).no_preflight


# -- the estimate against a real run ----------------------------------------------------------------------

# One recipe on an MLP (3 x 1024 wide, 12.6 MB float32) in a fresh process. The same recipe runs first on
# a tiny model so that imports and one-time allocations are not counted; the growth of the peak resident
# memory (VmHWM, reset just before the run) over the resident memory then is what the estimate must bound.
PROBE = textwrap.dedent(
    """
    import gc, json, resource, sys
    import torch, torch.nn as nn
    from torchslim.core.context import Context
    from torchslim.measure.memory import estimate_compress
    from torchslim.recipes import recipe_from_dict, run_recipe

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def mlp(width, depth):
        torch.manual_seed(0)
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, 10)).eval()

    def context(width):
        g = torch.Generator().manual_seed(1)
        cal = [(torch.randn(64, width, generator=g),) for _ in range(4)]
        train = [(torch.randn(64, width, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(4)]
        return Context(example_inputs=(cal[0][0],), calibration=cal, train_data=train)

    torch.set_num_threads(1)
    recipe = recipe_from_dict({"name": "probe", "steps": json.loads(sys.argv[1])})
    run_recipe(mlp(128, 2), recipe, context(128), latency_runs=1, progress=False)
    model, ctx = mlp(1024, 3), context(1024)
    steps = [s.config for s in recipe.steps]
    estimate = estimate_compress(model, steps, calibration=ctx.calibration, example_inputs=ctx.example_inputs)
    gc.collect()
    before = rss()
    # The peak of this run only: writing 5 to clear_refs resets VmHWM (ru_maxrss would also count any
    # earlier transient peak of the process, e.g. an import's).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run_recipe(model, recipe, ctx, latency_runs=1, progress=False)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"estimate": estimate.total, "growth": peak - before, "parts": estimate.parts}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm, clear_refs and VmHWM")
@pytest.mark.parametrize(
    "steps",
    [  # each starts a fresh interpreter and runs the recipe twice: the quick set keeps one of them
        pytest.param([{"kind": "distill", "epochs": 1, "batch_size": 64}], id="distill"),
        pytest.param([{"kind": "int4-weight-only", "method": "gptq"}], id="gptq", marks=pytest.mark.slow),
        pytest.param([{"kind": "wanda-pruning", "sparsity": 0.5}], id="wanda", marks=pytest.mark.slow),
        pytest.param(
            [{"kind": "sparsegpt-pruning", "sparsity": 0.5, "sequential": False}],
            id="sparsegpt-one-pass",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_estimate_bounds_the_measured_peak_within_3x(steps):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(steps)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    estimate, growth = result["estimate"], result["growth"]
    assert growth > 0
    assert growth <= estimate <= 3 * growth, result
