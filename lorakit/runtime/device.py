"""Where a run computes: the device, and how many CPU threads it uses."""

from __future__ import annotations

import os

import torch

from lorakit.errors import LorakitError


def resolve_device(name: str) -> torch.device:
    """`name` ('auto', 'cpu', 'cuda', 'mps') as a device; auto -> cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LorakitError("--device cuda: no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def set_threads(threads: int | None) -> int:
    """Use `threads`, or the physical cores (hyper-threads share a core's GEMM units, so more
    threads than cores only contend); returns the count."""
    import psutil

    n = threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
