"""Make freed tensor memory go back to the OS at once (glibc), so RSS follows live tensors.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB); after that,
tensors of a few MB come from the heap, and the heap's high-water mark stays resident. On
SmolLM2-135M LoRA this kept ~0.45 GB of freed activations resident (bench/RESULTS_quant.md).
Pinning the threshold at 1 MB serves every larger tensor by mmap, returned on free; the cost is
a page fault per fresh page, small next to the matmuls that fill those tensors.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc malloc.h
LEAN_THRESHOLD = 1 << 20


def lean_malloc(threshold: int = LEAN_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at `threshold` bytes; False where there is no glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
