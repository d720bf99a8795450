"""kernels.hugepages: zero tensors in memory advised for transparent huge pages, or plain ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchslim.kernels import hugepages
from torchslim.quantization.int4.w4a8 import Int4W4A8Linear


def _vma_flags(address: int) -> list[str]:
    """VmFlags of the mapping of this process that holds ``address`` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_small_or_turned_off_gives_torch_zeros(monkeypatch) -> None:
    t = hugepages.zeros((4, 8), torch.float32)
    assert t.dtype == torch.float32 and t.shape == (4, 8) and not t.any()
    monkeypatch.setenv(hugepages.ENV, "0")
    assert not hugepages.available()
    big = hugepages.zeros((3 << 20,), torch.uint8)
    assert big.untyped_storage().nbytes() == big.nbytes == 3 << 20


@pytest.mark.skipif(not hugepages.available(), reason="transparent huge pages are off or not Linux")
def test_large_tensors_start_on_a_huge_page_advised_for_huge_pages() -> None:
    t = hugepages.zeros((5, 1 << 20), torch.uint8)  # 5 MiB: two whole huge pages and a tail
    assert t.data_ptr() % hugepages.HUGE_PAGE == 0 and t.is_contiguous() and not t.any()
    assert "hg" in _vma_flags(t.data_ptr())  # madvise(MADV_HUGEPAGE) took
    t.fill_(7)
    assert int(t.sum()) == 7 * t.numel()
    # A W4A8 layer's packed weight lives there; packing writes into it, a state dict round-trips it.
    layer = Int4W4A8Linear(4096, 2048, group_size=128)
    assert layer.packed.data_ptr() % hugepages.HUGE_PAGE == 0
    other = Int4W4A8Linear(4096, 2048, group_size=128)
    layer.packed.random_(0, 256)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.packed, layer.packed) and other.packed.data_ptr() % hugepages.HUGE_PAGE == 0
