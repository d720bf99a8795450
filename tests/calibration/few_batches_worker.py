"""Worker for ``test_distributed_calibration.py``: more ranks than batches (a rank calibrates on nothing).

``torchrun --nproc_per_node 3 few_batches_worker.py``: each rank computes the statistics and captured
rows of two batches in one process and split over the ranks, prints whether they are equal, and exits
1 when they are not.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from torchslim.calibration import capture_inputs, collect_input_stats
from torchslim.calibration.distributed import torchrun_calibration


def statistics() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(0)
    cal = [torch.randn(5, 8, generator=g), torch.randn(7, 8, generator=g)]
    out = {}
    for name, s in collect_input_stats(m, {"0": m[0], "2": m[2]}, cal, hessian=True).items():
        out.update({f"{name}.hessian": s.hessian, f"{name}.norm": s.norm, f"{name}.count": torch.tensor(s.count)})
    out.update({f"{n}.rows": x for n, x in capture_inputs(m, ["0", "2"], cal, kind="test").items()})
    return out


if __name__ == "__main__":
    single = statistics()
    with torchrun_calibration() as shard:
        split = statistics()
    equal = single.keys() == split.keys() and all(torch.equal(single[k], split[k]) for k in single)
    # One write(2) of a short line: atomic on a pipe, so the ranks' lines never interleave.
    os.write(1, f"rank {shard.rank} of {shard.world_size}: equal={equal}\n".encode())
    os._exit(0 if equal else 1)  # no C++ teardown after the group is gone (see distributed_worker.py)
