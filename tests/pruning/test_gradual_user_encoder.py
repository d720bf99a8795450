"""GradualPruning on a user's nn.TransformerEncoder classifier (MHA split by the architecture adapter)."""

from __future__ import annotations

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.context import Context
from torchslim.pruning import GradualPruning


class EncoderClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def test_gradual_pruning_transformer_encoder_prunes_q_k_v_and_runs_under_no_grad():
    torch.manual_seed(0)
    m = EncoderClassifier().eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 5, 16, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]
    config = GradualPruning(
        final_sparsity=0.5, steps=2, epochs_per_step=1, final_epochs=0, scope="layer", keep_first_last=False
    )
    ts.compress_(m, config, ctx=Context(train_data=batches))
    m.eval()
    with torch.no_grad():  # the inference fast path of nn.TransformerEncoderLayer
        out = m(batches[0][0])
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    # Every attention weight is pruned, q/k/v included (not only out_proj, the one Linear MHA holds).
    attn = {n: p for n, p in m.named_parameters() if "self_attn" in n and p.dim() == 2}
    assert len(attn) >= 2 * 4
    for n, p in attn.items():
        sparsity = (p == 0).float().mean().item()
        assert 0.4 <= sparsity <= 0.6, (n, sparsity)
