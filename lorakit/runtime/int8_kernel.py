"""The int8 GEMM kernel behind the ``int8`` precision, in one place so it can change with PyTorch.

The kernel is PyTorch's dynamically quantized linear (``torch.ops.quantized.linear_dynamic``: fbgemm
or oneDNN through the ``x86`` quantized engine, u8 x s8 with int32 accumulation). On AVX2 CPUs it is
the one int8 GEMM in PyTorch that beats the fp32 GEMM: ``torch._int_mm`` is far slower there on CPU,
and torchao's int8 path calls it. It quantizes its input with one scale per tensor; `int8_matmul`
wraps it with two details that hold the quality (bench/RESULTS.md, round 6, has the losses):
- per-token scales: each row is divided by its absmax first and the output rows multiplied back;
  one outlier token then costs only its own row its resolution.
- outlier channels in fp32: a few input channels of a transformer's activations are far larger
  than the rest (Dettmers et al. 2022, LLM.int8(), sec. 3.2), and int8 rows scaled by them lose
  the others. The ``1 / OUTLIER_SHARE`` channels with the largest absmax in each call are zeroed
  in the int8 input and computed as a small fp32 GEMM against those columns of W.
"""

from __future__ import annotations

import time
import warnings

import torch


# Weights in 7 bits ([-63, 63]), activations in 8 (u8). AVX2 has no int8 dot product into int32: its
# u8 x s8 multiply-add (vpmaddubsw) sums pairs of products into int16 and saturates, and
# 255 * 127 * 2 > 32767 while 255 * 63 * 2 < 32767. Of the two ways out (PyTorch's `reduce_range`
# takes the bit from the activations), the weight's bit costs less loss (bench/RESULTS.md, round 6).
WEIGHT_LEVELS = 63


def pack(weight: torch.Tensor):
    """(out, in) float -> the kernel's packed weight, symmetric 7-bit, one scale per output row."""
    w = weight.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / WEIGHT_LEVELS).clamp_min(torch.finfo(torch.float32).tiny)
    with warnings.catch_warnings():  # quantized tensors are deprecated as a user API; the kernel still takes them
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


def gemm(x: torch.Tensor, packed) -> torch.Tensor:
    """x (M, in) fp32 -> x W^T (M, out) fp32 through the int8 kernel (input quantized per tensor, 8 bits)."""
    return torch.ops.quantized.linear_dynamic(x, packed, False)  # False: 8-bit activations (see WEIGHT_LEVELS)


OUTLIER_SHARE = 64  # 1 in 64 input channels (at least one) computed in fp32; see the module docstring


def int8_matmul(x: torch.Tensor, packed, columns) -> torch.Tensor:
    """x (M, in) -> x W^T (M, out): int8 GEMM over all but the outlier channels of x, fp32 for those.

    `packed` is W packed by `pack`; `columns(idx)` returns W[:, idx] (out, len(idx)) in fp32.
    """
    magnitude = x.abs()  # one pass serves both: the outlier channels' absmax, then the rows' without them
    idx = magnitude.amax(dim=0).topk(max(1, x.shape[1] // OUTLIER_SHARE)).indices
    scale = magnitude.index_fill_(1, idx, 0.0).amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
    rest = x.clone(memory_format=torch.contiguous_format).index_fill_(1, idx, 0.0)
    y = gemm(rest.div_(scale), packed).mul_(scale)
    return y.addmm_(x[:, idx], columns(idx).T)


def available() -> bool:
    """Does this PyTorch build have the kernel (CPU quantized engines)?"""
    return "x86" in torch.backends.quantized.supported_engines or "fbgemm" in torch.backends.quantized.supported_engines


def int8_gemm_gflops(m: int = 1024, k: int = 576, n: int = 1536, seconds: float = 0.2) -> float:
    """GFLOP/s of `gemm` at (m x k) @ (k x n) on this CPU, timed for about `seconds` (0 without the kernel)."""
    if not available():
        return 0.0
    x, packed = torch.randn(m, k), pack(torch.randn(n, k))
    for _ in range(3):
        gemm(x, packed)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        gemm(x, packed)
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


# The shapes the auto probe times: a small decoder's projections (hidden 576, MLP 1536) over 1024 tokens,
# forward and input-gradient directions
PROBE_SHAPES = ((1024, 576, 1536), (1024, 1536, 576), (1024, 576, 576))
INT8_GAIN = 1.4  # int8 must beat fp32 by this much on the probe: the frozen GEMMs are about half of a
# LoRA step (attention, norms, adapters and the loss do not speed up), so a smaller gain all but vanishes
# in the step (bench/RESULTS.md, rounds 6 and 8)


def int8_beats_fp32() -> bool:
    """Is the int8 path `INT8_GAIN` times faster than fp32 GEMMs on this CPU (`int8_speedup`)?"""
    return available() and int8_speedup() >= INT8_GAIN


def int8_speedup(rounds: int = 3) -> float:
    """fp32 time / `int8_matmul` time over `PROBE_SHAPES` (the int8 path whole: per-token scales,
    outlier channels); interleaved rounds, best of each, so a neighbour's burst on a shared machine
    hits both alike. 0 without the kernel."""
    if not available():
        return 0.0
    cases = []
    for m, k, n in PROBE_SHAPES:
        x, w = torch.randn(m, k), torch.randn(n, k) / k ** 0.5
        cases.append((x, w, pack(w)))

    def fp32() -> None:
        for x, w, _ in cases:
            x @ w.T

    def int8() -> None:
        for x, w, packed in cases:
            int8_matmul(x, packed, lambda idx, w=w: w[:, idx])

    best = {fp32: float("inf"), int8: float("inf")}
    for _ in range(rounds):
        for fn in best:
            fn()  # warm: first-touch pages and packing caches
            start = time.perf_counter()
            fn()
            best[fn] = min(best[fn], time.perf_counter() - start)
    return best[fp32] / best[int8]
