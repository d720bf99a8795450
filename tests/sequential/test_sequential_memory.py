"""Block-by-block compression holds about one block in memory: its peak is well below the in-memory path's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tiny_hf import tiny_llama  # noqa: E402

# Each child reports the resident set it had after importing what both paths import (VmRSS) and its
# peak (VmHWM, both from /proc/self/status): the comparison is of what compressing added, not of the
# interpreter and the libraries.
CHILD = """
import sys
import safetensors.torch, transformers.models.llama.modeling_llama, transformers.quantizers.auto
import torchslim.cli, torchslim.measure, torchslim.quantization, torchslim.recipes, torchslim.sequential

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

base = status("VmRSS")
rc = torchslim.cli.main(sys.argv[1:])
print("RESULT", rc, base, status("VmHWM"))
"""


def _peak_added_kb(argv: list[str]) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCHSLIM_PROGRESS": "off"}
    out = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, timeout=900)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, out.stderr[-2000:]
    rc, base, peak = map(int, line.split()[1:])
    assert rc == 0, out.stderr[-2000:]
    return peak - base


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS/VmHWM from /proc (Linux)")
def test_sequential_peak_memory_is_well_below_in_memory(tmp_path: Path) -> None:
    model = tiny_llama(512, 1536, 8, 8, vocab=2048, max_len=128)
    fp32_kb = sum(p.numel() for p in model.parameters()) * 4 // 1024  # about 115 MB
    model.save_pretrained(tmp_path / "hf", max_shard_size="20MB")
    del model
    recipe = tmp_path / "rtn.yaml"
    steps = [{"kind": "int4-weight-only", "group_size": 128, "method": "rtn"}]
    recipe.write_text(json.dumps({"name": "rtn", "steps": steps}), encoding="utf-8")
    argv = ["compress", "--model", f"hf:{tmp_path / 'hf'}", "--recipe", str(recipe), "--latency-runs", "1"]
    in_memory = _peak_added_kb([*argv, "--out", str(tmp_path / "memory")])
    sequential = _peak_added_kb([*argv, "--out", str(tmp_path / "seq"), "--sequential"])
    assert in_memory > fp32_kb  # the whole model was resident at once
    # One block of eight at a time, plus the embeddings or the head (a few percent of the model here):
    # under a third of what the in-memory path added (which holds the model, its int4 copy and the
    # serialised artifact at once).
    assert sequential < 0.33 * in_memory, (sequential, in_memory)
    same = (tmp_path / "memory" / "model.safetensors").read_bytes() == (
        tmp_path / "seq" / "model.safetensors"
    ).read_bytes()
    assert same
