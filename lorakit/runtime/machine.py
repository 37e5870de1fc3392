"""What kind of machine this is, for benchmarks and run summaries: CPU model, the flags that decide
which kernels run (AVX2, AVX-512, AVX512-BF16, AMX, VNNI, NEON), and GEMM rates measured here."""

from __future__ import annotations

import os
import platform
import time

import torch

# the instruction-set flags that change which GEMM kernels run (Linux /proc/cpuinfo names)
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
                "amx_tile", "asimd", "sve")


def cpu_facts() -> dict[str, object]:
    """CPU model name, logical cores and the `KERNEL_FLAGS` it has (Linux; elsewhere what Python knows)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = value.strip()
                elif key in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    return {"cpu": name, "logical_cores": os.cpu_count(), "flags": [f for f in KERNEL_FLAGS if f in flags]}


def gemm_peak_gflops(dtype: torch.dtype = torch.float32, m: int = 1024, k: int = 576, n: int = 1536,
                     seconds: float = 2.0) -> float:
    """GFLOP/s of an (m x k) @ (k x n) matmul in `dtype` on this CPU, timed for about `seconds`."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):  # kernel selection, page faults
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9
