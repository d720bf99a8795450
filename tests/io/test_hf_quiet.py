"""Loading a Hugging Face folder prints no third-party import noise (torchao's CUDA-only extensions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_load_hf_model_is_quiet(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    code = f"from torchslim.io.hf import load_hf_model; load_hf_model({str(tmp_path / 'bert')!r}); print('loaded')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "loaded" in run.stdout
    for noise in ("Failed to load", "register_constant", "Traceback"):
        assert noise not in run.stderr, run.stderr


def test_compressing_a_users_transformers_model_is_quiet() -> None:
    # The user imports transformers and builds the model; recording the first structural change imports
    # transformers' quantizer registry (torchslim keeps the structure log in the model's config).
    code = (
        "import torchslim as ts\n"
        "from transformers import BertConfig, BertModel\n"
        "cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)\n"
        "ts.compress_(BertModel(cfg).eval(), ts.Int8WeightOnly())\n"
        "print('compressed')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "compressed" in run.stdout
    for noise in ("Failed to load", "register_constant", "Traceback"):
        assert noise not in run.stderr, run.stderr
