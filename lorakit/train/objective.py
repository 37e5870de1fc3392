"""What the trainer minimises: summed next-token CE over labelled positions, memory-lean.

The decoder runs to its final hidden states; the output head and the loss run chunk by
chunk (`chunked_cross_entropy`), only on positions that have a label. A prompt-tuning adapter's
virtual positions lead the decoder's outputs (as PEFT's do) and are dropped first: the labels
are the real tokens' only. (PEFT's own prompt-tuning loss also scores the first real token from
the last virtual position; lorakit scores the tokens it scores for LoRA and prefix tuning, so the
losses of the methods compare.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters import virtual_positions
from lorakit.families import PLAIN, family_for
from lorakit.train.loss import IGNORE, chunked_cross_entropy
from lorakit.train.recompute import recomputing


def _head_with_weight(model: nn.Module) -> nn.Module | None:
    head = model.get_output_embeddings()
    return head if isinstance(getattr(head, "weight", None), torch.Tensor) else None


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], chunk: int | None = None,
                   compiled: bool = False) -> tuple[torch.Tensor, int]:
    """``(sum of token losses, number of labelled tokens)`` for one batch.

    batch: ``input_ids`` (B, T), ``labels`` (B, T) already shifted, optional ``position_ids``. The
    decoder's (B, N + T) outputs under an N-token prompt-tuning adapter are cut to the last T.
    Activations registered for recomputation (`lorakit.train.lean`) are not stored. `compiled`
    (--compile): the loss's softmax runs as a compiled kernel.
    """
    with recomputing():
        return _causal_lm_loss(model, batch, chunk, compiled)


def _causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], chunk: int | None,
                    compiled: bool) -> tuple[torch.Tensor, int]:
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"]}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    head = _head_with_weight(model)
    virtual = virtual_positions(model)  # prompt tuning: the N virtual positions come first
    if family_for(model).head == PLAIN and head is not None:  # logits = lm_head(final hidden) [+ softcap]
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state[:, virtual:]
        softcap = getattr(model.config, "final_logit_softcapping", None)
        return chunked_cross_entropy(hidden, head, labels, chunk=chunk, softcap=softcap, compiled=compiled)
    logits = model(**inputs, use_cache=False).logits[:, virtual:]  # other architectures: the plain path
    n = int((labels != IGNORE).sum())
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, n


@torch.no_grad()
def evaluate(model: nn.Module, batches, n_batches: int, chunk: int | None = None,
             compiled: bool = False) -> dict[str, float]:
    """Mean token loss and perplexity over `n_batches` batches (model put back in its mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for _ in range(n_batches):
        loss, n = causal_lm_loss(model, next(batches), chunk, compiled)
        total, count = total + float(loss), count + n
    model.train(was_training)
    mean = total / max(count, 1)
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0)), "eval_tokens": count}
