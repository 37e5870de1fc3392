"""Compute precision of a training run: fp32, or bf16 mixed precision where bf16 GEMMs are native.

bf16 mixed precision is autocast: matmuls run in bf16 with fp32 accumulation, while the adapter
weights, their gradients, the optimizer state, norms, softmax and the loss stay fp32 (the chunked
loss upcasts each logits chunk, `lorakit.train.loss`). Whether it pays depends on the chip: a CPU
with AVX512-BF16 or AMX runs bf16 GEMMs ~4x faster than fp32 (measured on this project's EPYC:
786 vs 192 GFLOP/s at 1024 x 576 @ 576 x 1536), one with AVX2 only emulates them ~400x slower.
So `auto` measures instead of guessing from flags, and an explicit `bf16` on a slow chip warns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING

from lorakit.errors import LorakitError

if TYPE_CHECKING:  # torch loads on first use: CLI parsers read PRECISIONS without it
    import torch

PRECISIONS = ("fp32", "bf16", "auto")
log = logging.getLogger("lorakit")


def gemm_gflops(dtype: torch.dtype, n: int = 256, seconds: float = 0.05) -> float:
    """GFLOP/s of an (n x n) @ (n x n) CPU matmul in `dtype`, timed for about `seconds`."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # first call: kernel selection, page faults
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * count / elapsed / 1e9


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Does `device_type` run bf16 matmuls at least as fast as fp32? (CPU: measured once, ~0.1 s)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return gemm_gflops(torch.bfloat16) >= gemm_gflops(torch.float32)
    return False


def check_precision(name: str) -> str:
    """`name` if it is one of PRECISIONS, else a one-line refusal."""
    if name not in PRECISIONS:
        raise LorakitError(f"--precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return name


def resolve_precision(name: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for `name` in PRECISIONS on `device`; `auto` picks bf16 only where it is native."""
    if check_precision(name) == "auto":
        return "bf16" if native_bf16(device.type) else "fp32"
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


def frozen_dtype(precision: str, method: str) -> "torch.dtype | None":
    """The dtype a run holds its frozen projection weights in: bf16 for a bf16 LoRA run, else as loaded.

    Autocast would cast them to bf16 on every use, so the GEMMs see the very same values (the same
    round-to-nearest), bit for bit; holding them so saves the fp32 copies: 371 MB of SmolLM2-135M's
    peak (2275 -> 1904 MB at 4 x 256 with --compile, same speed). Only for `lora`: DoRA's norms read
    the base weight in fp32 math, head-only saves the whole model, full trains every weight, QLoRA's
    are quantized already.
    """
    import torch

    return torch.bfloat16 if precision == "bf16" and method == "lora" else None


def hold_base_in(model: "torch.nn.Module", precision: str) -> str:
    """Inference (`generate`, `serve`, `eval`): resolve `precision` on the model's device and cast the
    whole base to bf16 when it resolves so; returns 'fp32' or 'bf16'. Call it before loading adapters,
    which keep fp32 factors on any base (`LoraLayer.factor_options`)."""
    import torch

    resolved = resolve_precision(precision, next(model.parameters()).device)
    if resolved == "bf16":
        model.to(torch.bfloat16)
    return resolved


def store_frozen(model: "torch.nn.Module", dtype: "torch.dtype") -> int:
    """Recast the frozen fp32 weights and biases of plain and fused linear layers to `dtype`; returns how many.

    The input embedding and the output head stay as they are (tied in SmolLM2). Pages of a file
    mapping (transformers maps safetensors) are dropped, or they would stay resident.
    """
    import torch
    from torch import nn

    from lorakit.plan.malloc import drop_file_pages, file_backed, file_mappings
    from lorakit.train.fuse import FusedBase

    keep = {id(getattr(m, "weight", None)) for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    ranges, stored = file_mappings(), 0
    for module in model.modules():
        if type(module) is not nn.Linear and not isinstance(module, FusedBase):
            continue
        for tensor in (module.weight, module.bias):
            if tensor is None or tensor.requires_grad or tensor.dtype != torch.float32 or id(tensor) in keep:
                continue
            old = tensor.data
            tensor.data = old.to(dtype)
            if file_backed(old, ranges):
                drop_file_pages(old)
            stored += 1
    return stored
