"""Memory-lean causal-LM loss: cross-entropy over the vocabulary, chunk by chunk.

The full logits of a batch (B x T x V floats, V being tens of thousands of tokens or more) and
their gradient are never held at once. Only positions with
a label are projected at all, so masked prompt tokens and padding cost nothing. Each
chunk's gradient is formed in the forward pass right after its logits, so logits are
neither stored nor recomputed (the fused linear cross-entropy of Liger Kernel; see also
Cut Cross-Entropy, arXiv:2411.09009).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.plan.activations import even_chunk, loss_chunk_tokens
from lorakit.quant.linear import QuantLinear

IGNORE = -100

# id of a frozen head weight -> (weak reference to it, its version, dtype, its copy in that dtype):
# bf16 training would otherwise cast the (V x H) head every step (profiled: bench/RESULTS.md, round 4);
# the copy is one that existed during the loss anyway
_CASTS: dict[int, tuple] = {}


def _in_dtype(weight: torch.Tensor, dtype: torch.dtype, frozen: bool) -> torch.Tensor:
    """`weight` in `dtype`; a frozen weight's copy is kept until the weight changes or goes."""
    if weight.dtype == dtype or not frozen:
        return weight.to(dtype)
    cached = _CASTS.get(id(weight))
    if cached is not None and cached[0]() is weight and cached[1:3] == (weight._version, dtype):
        return cached[3]
    for key in [k for k, entry in _CASTS.items() if entry[0]() is None]:  # weights that are gone
        del _CASTS[key]
    cast = weight.detach().to(dtype)
    _CASTS[id(weight)] = (weakref.ref(weight), weight._version, dtype, cast)
    return cast


class _ChunkedLinearCE(torch.autograd.Function):
    """sum over tokens of CE(softcap(h @ W^T + b), y); h (N, H), W (V, H), y (N,).

    The loss is a scalar that ends the graph, so its gradient is known up to the scalar
    `grad_out`: when gradients are wanted, each chunk's ``(softmax - onehot) @ W`` is formed in
    the forward pass, right after its logits, and backward only rescales it. One (chunk, V)
    buffer at a time, worked on in place; no logits are kept or recomputed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap, want_grad, fused):
        want_h, want_w, want_b = want_grad
        # GEMMs in the autocast dtype where autocast is on (bf16 training), softmax and loss in fp32
        device = hidden.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        if compute == torch.float32:
            # fp32 logits need no casts, and the in-place steps beat the compiled kernel there, with
            # half its memory (bench/RESULTS.md, round 4); the speed plan's `compiled_loss` says the same
            fused = None
        w = weight if isinstance(weight, QuantLinear) else _in_dtype(weight, compute, frozen=not weight.requires_grad)
        with torch.autocast(device, enabled=False):
            return _ChunkedLinearCE._run(ctx, hidden, w, compute,
                                         None if bias is None else bias.to(compute),
                                         targets, chunk, softcap, want_h, want_w, want_b, weight, bias, fused)

    @staticmethod
    def _run(ctx, hidden, w, compute, b, targets, chunk, softcap, want_h, want_w, want_b, weight, bias, fused):
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        grad_b = torch.zeros_like(bias) if want_b else None
        total = hidden.new_zeros((), dtype=torch.float32)
        quantized = isinstance(w, QuantLinear)
        for start in range(0, hidden.shape[0], chunk):
            stop = min(start + chunk, hidden.shape[0])
            h = hidden[start:stop].to(compute)  # a dense head is in it already; a quantized one dequantizes into it
            softmax_and_grad = fused or _softmax_ce_in_place
            # the logits are passed unnamed: once they are copied to fp32, their bf16 buffer is freed
            loss, grad = softmax_and_grad(_project(h, w, b, quantized), targets[start:stop], softcap,
                                          want_h or want_w or want_b)
            total += loss
            if grad is None:
                continue
            grad = grad.to(h.dtype)  # bf16 GEMMs take a bf16 gradient; no copy in fp32
            if want_h and quantized:
                grad_h[start:stop] = w.matmul_transposed(grad)
            elif want_h:
                if grad_h.dtype == grad.dtype:  # straight into the gradient buffer
                    torch.mm(grad, w, out=grad_h[start:stop])
                else:
                    grad_h[start:stop] = torch.mm(grad, w)
            if want_w:
                if grad_w.dtype == grad.dtype:
                    grad_w.addmm_(grad.T, h)
                else:
                    grad_w += torch.mm(grad.T, h)
            if want_b:
                grad_b += grad.sum(0)
        ctx.grads = (grad_h, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        scaled = [None if g is None else g.mul_(grad_out) for g in (grad_h, grad_w, grad_b)]
        return (*scaled, None, None, None, None, None)


def _project(h: torch.Tensor, w, b: torch.Tensor | None, quantized: bool) -> torch.Tensor:
    """Logits of one chunk: h (N, H) -> (N, V), by a dense or a quantized head."""
    if not quantized:
        return F.linear(h, w, b)
    raw = w.matmul(h)
    return raw if b is None else raw.add_(b)


def _softmax_ce_in_place(raw: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                         want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`softmax_ce` eagerly, in one fp32 (N, V) buffer: raw's own when it is fp32 (overwritten)."""
    raw = raw.float()  # no copy when computing in fp32
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(raw / softcap)
        raw = tanh * softcap
    picked = raw.gather(1, targets[:, None])[:, 0]
    top = raw.amax(dim=-1)
    # softmax and log-sum-exp in place: no (chunk, V) temporaries beyond this buffer
    probs = raw.sub_(top[:, None]).exp_()
    norm = probs.sum(-1)
    loss = (norm.log() + top - picked).sum()
    if not want_grad:
        return loss, None
    grad = probs.div_(norm[:, None])  # d CE / d logits = softmax - onehot
    grad[torch.arange(len(targets)), targets] -= 1.0
    if tanh is not None:
        grad *= 1 - tanh * tanh  # d(c tanh(z/c))/dz
    return loss, grad


def softmax_ce(raw: torch.Tensor, targets: torch.Tensor, softcap: float | None,
               want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed CE of one chunk of logits and its gradient: raw (N, V) in the GEMM's dtype, targets (N,).

    Returns ``(loss, d loss / d raw)``, the gradient in raw's dtype (None unless `want_grad`).
    Written out of place for torch.compile (`compiled_softmax_ce`), which fuses it into a few passes
    over the chunk; eagerly, `_softmax_ce_in_place` is leaner.
    """
    z = raw.float()
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(z / softcap)
        z = tanh * softcap
    top = z.amax(dim=-1, keepdim=True)
    exp = (z - top).exp()
    norm = exp.sum(dim=-1, keepdim=True)
    loss = (norm.log() + top).sum() - z.gather(1, targets[:, None]).sum()
    if not want_grad:
        return loss, None
    # softmax - onehot, the onehot as a comparison so no scatter breaks the fused kernel
    vocab = torch.arange(z.shape[-1], device=z.device)
    grad = exp / norm - (vocab[None, :] == targets[:, None]).to(z.dtype)
    if tanh is not None:
        grad = grad * (1 - tanh * tanh)  # d(c tanh(z/c))/dz
    return loss, grad.to(raw.dtype)


_COMPILED_CE = None


def compiled_softmax_ce():
    """`softmax_ce` compiled once for all chunk sizes (--compile).

    Eagerly the softmax, the loss and the gradient take several passes over each (chunk, V) buffer,
    plus the casts around bf16 GEMMs, most of the loss's time in a bf16 step; fused, they take one,
    and no fp32 copy of the chunk's logits is made (bench/RESULTS.md, round 4). Used for bf16
    logits only (see `_ChunkedLinearCE.forward`).
    """
    global _COMPILED_CE
    if _COMPILED_CE is None:
        _COMPILED_CE = torch.compile(softmax_ce, dynamic=True)
    return _COMPILED_CE


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None) -> torch.Tensor:
    logits = F.linear(h, weight, bias)
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, *,
                          chunk: int | None = None, softcap: float | None = None,
                          compiled: bool = False) -> tuple[torch.Tensor, int]:
    """Summed next-token CE and the number of scored tokens.

    hidden (B, T, H) final hidden states; labels (B, T) the target of each position
    (already shifted; IGNORE where no loss). Returns ``(sum_loss, n_tokens)``. `chunk`: most tokens
    of logits at a time (None: `loss_chunk_tokens` of the head's vocabulary); the labelled tokens are
    split into equal chunks. `compiled`: the softmax and gradient of each chunk run as one
    torch.compile'd kernel (`compiled_softmax_ce`).
    """
    flat_labels = labels.reshape(-1)
    keep = (flat_labels != IGNORE).nonzero()[:, 0]
    if keep.numel() == 0:
        return hidden.sum() * 0.0, 0
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    targets = flat_labels.index_select(0, keep)
    grad_on = torch.is_grad_enabled()
    fused = compiled_softmax_ce() if compiled else None
    # a frozen quantized head goes in whole: its rows are dequantized chunk by chunk
    quantized = isinstance(head, QuantLinear)
    weight = head if quantized else head.weight
    want = (grad_on and h.requires_grad, grad_on and not quantized and weight.requires_grad,
            grad_on and head.bias is not None and head.bias.requires_grad)
    chunk = even_chunk(int(keep.numel()), loss_chunk_tokens(head.out_features if quantized else weight.shape[0], chunk))
    total = _ChunkedLinearCE.apply(h, weight, head.bias, targets, chunk, softcap, want, fused)
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
