"""Dropout on the LoRA path with a cheaper random mask than `nn.Dropout`'s.

`nn.Dropout` on a CPU draws one random number per element (``bernoulli_``), and that draw, not
the multiply, is most of its cost: with dropout on every adapted projection it is a large share
of a LoRA step (bench/RESULTS.md, round 6, has the profile). Here each 64-bit draw is split into
four 16-bit values, so a mask takes a quarter of the draws. An element is kept when its 16-bit
value is at or above ``round(p * 65536)`` (as signed, offset by -32768): the drop probability is
``p`` rounded to a multiple of 1/65536 (within 8e-6 of it). Kept elements are scaled by
1 / (1 - p) as `nn.Dropout` does, and backward applies the same mask, saved as one byte per
element like `nn.Dropout`'s.

On the LoRA path the dropped input only feeds the (r, in) factor A, so `dropped_down` computes
``scaling * A(dropout(x))`` as one autograd node (issue 18, item 4): it keeps x itself and the mask
instead of a dropped fp32 copy (x is kept for A's gradient anyway, and several projections reading
the same x share it, where each would keep its own copy), folds 1 / (1 - p) into the (.., r)
result, and zeroes with the mask instead of multiplying by it (no float copy of the mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16
_OFFSET = 1 << 15


def _draws(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """int16 values uniform over [-32768, 32767], of `shape`, four from each 64-bit draw."""
    n = shape.numel()
    draws = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return draws.view(torch.int16)[:n].view(shape)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`: each element True with probability 1 - p (p rounded to 1/65536)."""
    return _draws(shape, device) >= round(p * _LEVELS) - _OFFSET


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """The complement of `keep_mask` from the same draws: True (dropped) with probability p."""
    return _draws(shape, device) < round(p * _LEVELS) - _OFFSET


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


class _DroppedDown(torch.autograd.Function):
    """``(x masked) @ A^T * factor``; x (M, in), A (r, in) -> (M, r). Saves x and the drop mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float, factor: float) -> torch.Tensor:
        dropped = drop_mask(x.shape, p, x.device)
        ctx.save_for_backward(x, dropped, weight)
        ctx.factor = factor
        return F.linear(x.masked_fill(dropped, 0.0), weight).mul_(factor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, dropped, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype) * ctx.factor  # (M, r), cheap; fp32 also under bf16 autocast
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).masked_fill_(dropped, 0.0)
        if ctx.needs_input_grad[1]:
            flat = x.masked_fill(dropped, 0.0).reshape(-1, x.shape[-1])  # recomputed: one pass, not a kept copy
            grad_w = grad.reshape(-1, grad.shape[-1]).T @ flat
        return grad_x, grad_w, None, None


def dropped_down(dropout: nn.Module, x: torch.Tensor, weight: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling * F.linear(dropout(x), weight)``: x (..., in), weight (r, in) -> (..., r).

    A training `LoraDropout` runs as one node (`_DroppedDown`, see the module docstring); otherwise
    (eval mode, p = 0, `nn.Identity`, another module) the two steps run as written."""
    if isinstance(dropout, LoraDropout) and dropout.training and dropout.p > 0 and torch.is_grad_enabled():
        return _DroppedDown.apply(x, weight, dropout.p, scaling / (1.0 - dropout.p))
    return F.linear(dropout(x), weight) * scaling
