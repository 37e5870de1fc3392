"""Process memory: resident size, glibc's heap, and pages of mapped weight files.

glibc raises its mmap threshold each time a large block is freed (up to its 32 MiB ceiling); after that,
tensors of a few MB come from the heap, and the heap's high-water mark stays resident
(bench/RESULTS_quant.md). Pinning the threshold at 1 MB (`lean_malloc`) serves every larger
tensor by mmap, returned on free; the cost is a page fault per fresh page.
A training step allocates and frees the same large buffers every step (the loss chunk's logits are
far over the ceiling, so glibc maps and unmaps them each time), and on a virtual machine each fresh
page's fault is dear. `steady_malloc` is the opposite of `lean_malloc`: every block comes from the
heap and the heap is never trimmed, so step two onwards reuses step one's pages (bench/RESULTS.md,
round 8). The peak is the same; what a step frees stays resident for the next one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import psutil
import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
LEAN_THRESHOLD = 1 << 20
DEFAULT_TRIM_THRESHOLD = 128 * 1024  # glibc's M_TRIM_THRESHOLD default (mallopt(3))
STEADY_MMAP_THRESHOLD = 1 << 30  # every block a training step allocates comes from the heap
STEADY_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: the largest, i.e. never trim


def _mallopt(*settings: tuple[int, int]) -> bool:
    """glibc's ``mallopt`` for each (param, value); False where there is no glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return all(bool(libc.mallopt(param, int(value))) for param, value in settings)
    except (OSError, AttributeError):
        return False


def lean_malloc(threshold: int = LEAN_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at `threshold` bytes and its trim threshold at glibc's default (undoing a
    `steady_malloc` of this process); False where there is no glibc (nothing changes)."""
    return _mallopt((M_MMAP_THRESHOLD, threshold), (M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD))


def steady_malloc() -> bool:
    """Serve blocks up to `STEADY_MMAP_THRESHOLD` from the heap and never trim it (see the module
    docstring); False where there is no glibc. For training runs that do not release memory."""
    return _mallopt((M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD))


_MALLOC_TRIM: list = []


def release_free_heap() -> None:
    """Give the pages of freed heap memory back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    Blocks under the mmap threshold come from the heap; long-lived small tensors (LoRA factors,
    their AdamW state) interleaved with per-step ones fragment it, and its freed holes keep counting
    in RSS (quantizing layer by layer and training step by step both leave such holes;
    bench/RESULTS_quant.md and bench/RESULTS.md have the figures).
    """
    if not _MALLOC_TRIM:
        try:
            _MALLOC_TRIM.append(ctypes.CDLL(None).malloc_trim)
        except (AttributeError, OSError):
            _MALLOC_TRIM.append(None)
    if _MALLOC_TRIM[0] is not None:
        _MALLOC_TRIM[0](0)


def file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's file-backed mappings (Linux); empty elsewhere."""
    ranges = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 6 and fields[5].startswith("/") and fields[4] != "0":  # inode 0: anonymous
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((lo, hi))
    except OSError:
        pass
    return ranges


MADV_DONTNEED = 4  # Linux <sys/mman.h>
PAGE = 4096


def _drop_pages(ptr: int, nbytes: int) -> None:
    """Drop this process's pages of [ptr, ptr + nbytes) (whole pages inside it only; file pages stay
    in the page cache and would be read back from the file if touched again)."""
    start, stop = -(-ptr // PAGE) * PAGE, (ptr + nbytes) // PAGE * PAGE
    if stop > start and _MADVISE:
        _MADVISE[0](ctypes.c_void_p(start), ctypes.c_size_t(stop - start), MADV_DONTNEED)


try:
    _MADVISE = [ctypes.CDLL(None, use_errno=True).madvise]
except (AttributeError, OSError):
    _MADVISE = []


def file_backed(tensor: torch.Tensor, ranges: list[tuple[int, int]] | None = None) -> bool:
    """Does `tensor`'s storage lie in a file mapping (a safetensors file transformers mapped)?"""
    ptr = tensor.untyped_storage().data_ptr()
    return any(lo <= ptr < hi for lo, hi in (file_mappings() if ranges is None else ranges))


def drop_file_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a frozen, file-backed `tensor` (call once nothing reads it any more)."""
    _drop_pages(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def own_weights(model: torch.nn.Module) -> int:
    """Copy parameters and buffers still backed by the weights file into private memory; returns how many.

    transformers maps the safetensors file and its tensors point into it. Pages read once (the
    q/k/v and gate/up weights that `fuse_projections` copies into fused GEMMs) then stay resident
    as long as any tensor keeps the mapping alive. Each frozen tensor's old pages are dropped
    right after its copy, so the copy never holds the model twice.
    """
    ranges = file_mappings()
    copied = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if file_backed(tensor, ranges):
            old = tensor.data
            tensor.data = tensor.data.clone()  # same Parameter object: tied weights stay tied
            if not tensor.requires_grad:  # never written, so its file pages are clean: safe to drop
                drop_file_pages(old)
            copied += 1
    return copied


def rss_mb() -> float:
    """Resident memory of this process in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    On Linux this is VmHWM (/proc/self/status), which starts afresh at exec. `ru_maxrss` does not:
    a process started by fork + exec reports at least its parent's resident size at the fork, so
    workers (`lorakit compare`) would report their parent's peak instead of their own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource  # not on Windows; /proc is not on macOS, where ru_maxrss is in bytes

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
