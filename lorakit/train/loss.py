"""Memory-lean causal-LM loss: cross-entropy over the vocabulary, chunk by chunk.

The full logits of a batch (B x T x V floats: 200 MB for 4 x 256 tokens and SmolLM2's
49,152-token vocabulary) and their gradient are never held at once. Only positions with
a label are projected at all, so masked prompt tokens and padding cost nothing. The
backward pass recomputes each chunk's logits instead of storing them (as in Liger
Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy, arXiv:2411.09009).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class _ChunkedLinearCE(torch.autograd.Function):
    """sum over tokens of CE(softcap(h @ W^T + b), y); h (N, H), W (V, H), y (N,).

    One (chunk, V) buffer at a time, worked on in place; only the per-token log-sum-exp
    (N,) is kept for backward, where each chunk's logits are recomputed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap):
        lse = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            logits = _logits(hidden[start:start + chunk], weight, bias, softcap)
            picked = logits.gather(1, targets[start:start + chunk, None])[:, 0]
            top = logits.amax(dim=-1)
            # log-sum-exp in place: no (chunk, V) temporaries beyond the logits themselves
            lse_chunk = logits.sub_(top[:, None]).exp_().sum(-1).log_().add_(top)
            lse[start:start + chunk] = lse_chunk
            total += (lse_chunk - picked).sum()
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.softcap = chunk, softcap
        return total

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            stop = min(start + ctx.chunk, hidden.shape[0])
            h = hidden[start:stop]
            raw = F.linear(h, weight, bias)
            tanh = None
            if ctx.softcap is not None:
                tanh = torch.tanh(raw / ctx.softcap)
                raw = tanh * ctx.softcap
            # d CE / d logits = softmax - onehot; softmax = exp(logits - lse), in place
            grad = raw.sub_(lse[start:stop, None]).exp_()
            grad[torch.arange(stop - start), targets[start:stop]] -= 1.0
            if tanh is not None:
                grad *= 1 - tanh * tanh  # d(c tanh(z/c))/dz
            grad *= grad_out
            if need_h:
                torch.mm(grad, weight, out=grad_h[start:stop])
            if need_w:
                grad_w.addmm_(grad.T, h)
            if need_b:
                grad_b += grad.sum(0)
        return grad_h, grad_w, grad_b, None, None, None


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None) -> torch.Tensor:
    logits = F.linear(h, weight, bias)
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, *,
                          chunk: int = 1024, softcap: float | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token CE and the number of scored tokens.

    hidden (B, T, H) final hidden states; labels (B, T) the target of each position
    (already shifted; IGNORE where no loss). Returns ``(sum_loss, n_tokens)``.
    """
    flat_labels = labels.reshape(-1)
    keep = (flat_labels != IGNORE).nonzero()[:, 0]
    if keep.numel() == 0:
        return hidden.sum() * 0.0, 0
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    targets = flat_labels.index_select(0, keep)
    total = _ChunkedLinearCE.apply(h, head.weight, head.bias, targets, chunk, softcap)
    return total, int(keep.numel())


def shift_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Targets for next-token prediction: labels[t] = ids[t+1]; the last position has none.

    input_ids (B, T); loss_mask (B, T) bool, True where a token may be *predicted*.
    """
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    if loss_mask is not None:
        labels[:, :-1][~loss_mask[:, 1:]] = IGNORE
    return labels
