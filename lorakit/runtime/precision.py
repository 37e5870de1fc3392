"""Compute precision: fp32; bf16 mixed precision where the chip runs bf16 GEMMs natively; int8
frozen GEMMs (training only) where it does not.

bf16 mixed precision is autocast: matmuls run in bf16 with fp32 accumulation, while adapter
weights, their gradients, optimizer state, norms, softmax and the loss stay fp32. Whether it pays
depends on the chip: a CPU with AVX512-BF16 or AMX runs bf16 GEMMs several times faster than
fp32, one with AVX2 only emulates them far slower (bench/RESULTS.md prints both rates per
machine). So `auto` measures instead of guessing from flags, and an explicit `bf16` on a slow
chip warns. ``int8`` (training a LoRA/DoRA adapter or the head on a CPU) runs the frozen projections'
forward and input-gradient GEMMs in int8 (`lorakit.quant.int8mm`). `auto`, every command's default,
picks it for training on a CPU without native bf16 where a probe of the int8 path beats fp32 GEMMs
(`int8_faster`); its loss tracks fp32's (bench/RESULTS.md, rounds 6 and 8; issue 18).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from lorakit.errors import LorakitError

if TYPE_CHECKING:  # torch loads on first use: CLI parsers read PRECISIONS without it
    import torch

PRECISIONS = ("fp32", "bf16", "int8", "auto")
INFER_PRECISIONS = ("fp32", "bf16", "auto")  # generate, serve, eval: int8 is for training
log = logging.getLogger("lorakit")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Does `device_type` run bf16 matmuls at least as fast as fp32? (CPU: a short probe, measured once
    per machine kind and cached, `lorakit.runtime.cache.measured_once`.)"""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        from lorakit.runtime.cache import measured_once
        from lorakit.runtime.machine import gemm_peak_gflops

        def rate(dtype: torch.dtype) -> float:  # a small square GEMM, briefly: enough to tell the kinds apart
            return gemm_peak_gflops(dtype, 256, 256, 256, seconds=0.05)

        # best of three each: a neighbour's burst on a shared machine cannot flip it
        return measured_once("cpu_bf16_native", lambda: max(rate(torch.bfloat16) for _ in range(3))
                             >= max(rate(torch.float32) for _ in range(3)))
    return False


@functools.cache
def int8_faster() -> bool:
    """Do the int8 frozen GEMMs beat fp32 ones on this CPU (`int8_kernel.int8_beats_fp32`)? Measured once
    per machine kind and cached, as `native_bf16`."""
    from lorakit.runtime.cache import measured_once
    from lorakit.runtime.int8_kernel import int8_beats_fp32

    return measured_once("cpu_int8_faster", int8_beats_fp32)


def check_precision(name: str, choices: tuple[str, ...] = PRECISIONS) -> str:
    """`name` if it is one of `choices`, else a one-line refusal."""
    if name not in choices:
        raise LorakitError(f"--precision {name!r}: use one of {', '.join(choices)}")
    return name


def resolve_precision(name: str, device: torch.device, *, int8: bool = False) -> str:
    """'fp32', 'bf16' or 'int8' for `name` in PRECISIONS on `device`. `auto` picks bf16 where it is
    native, else int8 where the caller can run it (`int8`) and it is faster here (`int8_faster`), else
    fp32. `int8`: the caller can run int8 (explicit ``int8`` is refused otherwise)."""
    if check_precision(name) == "auto":
        if native_bf16(device.type):
            return "bf16"
        return "int8" if int8 and device.type == "cpu" and int8_faster() else "fp32"
    if name == "int8":
        from lorakit.runtime.int8_kernel import available

        if device.type != "cpu" or not available():
            raise LorakitError(f"--precision int8 runs on a CPU with PyTorch's int8 kernel (here: {device.type}); "
                               "use --precision bf16 or fp32")
        if not int8:
            raise LorakitError("--precision int8 is for training a LoRA/DoRA adapter or the head "
                               "(the frozen weights' GEMMs); use fp32, bf16 or auto here")
    if name == "bf16" and not native_bf16(device.type):
        log.warning("--precision bf16: this %s has no fast bf16 matmul (bf16 ran slower than fp32 in a probe); "
                    "it will compute slower than with --precision fp32", device.type)
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass and its loss run in: autocast to bf16, or nothing for fp32."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def hold_base_in(model: "torch.nn.Module", precision: str) -> str:
    """Inference (`generate`, `serve`, `eval`): resolve `precision` on the model's device and cast the
    whole base to bf16 when it resolves so; returns 'fp32' or 'bf16'. Call it before loading adapters,
    which keep fp32 factors on any base (`LoraLayer.factor_options`)."""
    import torch

    check_precision(precision, INFER_PRECISIONS)
    resolved = resolve_precision(precision, next(model.parameters()).device)
    if resolved == "bf16":
        model.to(torch.bfloat16)
    return resolved
