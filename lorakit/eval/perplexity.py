"""Token-level NLL and perplexity of a model on prepared samples, per book and overall.

Only completion tokens are scored (every token after the first for plain text), with the
trainer's own memory-lean loss, so evaluation and training measure the same quantity.
Samples are batched by similar length to waste little compute on padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch import nn

from lorakit.adapters import disable_adapters, set_adapter
from lorakit.data.schema import Sample
from lorakit.infer.batch import BASE
from lorakit.infer.virtual_rows import running_virtual, virtual_rows
from lorakit.train.batches import padded_batch
from lorakit.train.objective import causal_lm_loss



def summed_nll(model: nn.Module, samples: list[Sample], pad_id: int, batch_tokens: int = 4096) -> tuple[float, int]:
    """``(sum of completion-token NLL, number of scored tokens)`` of `model` over `samples`."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].ids))
    total, count = 0.0, 0
    batch: list[Sample] = []
    with torch.inference_mode():
        for i in order:
            s = samples[i]
            # the batch is padded to its longest (the newest, since sorted) sample
            if batch and len(s.ids) * (len(batch) + 1) > batch_tokens:
                loss, n = causal_lm_loss(model, padded_batch(batch, pad_id, mask_prompt=True))
                total, count, batch = total + float(loss), count + n, []
            batch.append(s)
        if batch:
            loss, n = causal_lm_loss(model, padded_batch(batch, pad_id, mask_prompt=True))
            total, count = total + float(loss), count + n
    return total, count


def summarize(nll_sum: float, tokens: int) -> dict[str, float]:
    """Mean NLL (nats/token), perplexity and token count."""
    mean = nll_sum / max(tokens, 1)
    return {"nll": mean, "ppl": math.exp(min(mean, 50.0)), "tokens": tokens}


def target_context(model: nn.Module, target: str):
    """Context manager under which `model` runs `target` (an adapter name, or BASE). A prefix/prompt
    adapter runs with its virtual tokens in front of every sample; only the real tokens are scored."""
    if target == BASE:
        return disable_adapters(model)
    if target in virtual_rows(model):
        return running_virtual(model, target)
    set_adapter(model, target)
    return nullcontext(model)


def perplexity_by_book(model: nn.Module, books: dict[str, list[Sample]], pad_id: int,
                       batch_tokens: int = 4096) -> dict:
    """``{"overall": {...}, "books": {book: {...}}}`` with nll, ppl and tokens each.

    Overall pools every scored token (a token-weighted mean over books).
    """
    out: dict = {"books": {}}
    total, count = 0.0, 0
    for book, samples in books.items():
        s, n = summed_nll(model, samples, pad_id, batch_tokens)
        out["books"][book] = summarize(s, n)
        total, count = total + s, count + n
    out["overall"] = summarize(total, count)
    return out


def perplexity_table(model: nn.Module, targets: Iterable[str], books: dict[str, list[Sample]], pad_id: int,
                     batch_tokens: int = 4096) -> dict[str, dict]:
    """`perplexity_by_book` for each target (BASE and adapter names loaded on `model`)."""
    result = {}
    for target in targets:
        with target_context(model, target):
            result[target] = perplexity_by_book(model, books, pad_id, batch_tokens)
    return result
