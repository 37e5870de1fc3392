"""Dropout on the LoRA path with a cheaper random mask than `nn.Dropout`'s.

`nn.Dropout` on a CPU draws one random number per element (``bernoulli_``), and that draw, not
the multiply, is most of its cost: with dropout on every adapted projection it is a large share
of a LoRA step (bench/RESULTS.md, round 6, has the profile). Here each 64-bit draw is split into
four 16-bit values, so a mask takes a quarter of the draws. An element is kept when its 16-bit
value is at or above ``round(p * 65536)`` (as signed, offset by -32768): the drop probability is
``p`` rounded to a multiple of 1/65536 (within 8e-6 of it). Kept elements are scaled by
1 / (1 - p) as `nn.Dropout` does, and backward applies the same mask, saved as one byte per
element like `nn.Dropout`'s.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16
_OFFSET = 1 << 15


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`: each element True with probability 1 - p (p rounded to 1/65536)."""
    n = shape.numel()
    draws = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return draws.view(torch.int16)[:n].view(shape) >= round(p * _LEVELS) - _OFFSET


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - p)
        return x * mask * ctx.scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None


class LoraDropout(nn.Module):
    """`nn.Dropout(p)` for the LoRA path (x (...) -> (...)): the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return _Dropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
