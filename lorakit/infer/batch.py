"""Batch generation on the serving engine (KV cache, one batch for all targets): for evaluation
and for the replay rows `lorakit data prepare` writes.

Every (prompt, target) pair is one engine request, so the base model and each adapter
answer the same prompts side by side in shared forward passes (`adapter_rows`). Each
request samples with its own seed, so results do not depend on how requests are batched.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

from torch import nn

from lorakit.errors import LorakitError
from lorakit.infer.engine import Engine
from lorakit.infer.sampling import SamplingParams

BASE = "base"  # the name of the model without adapters (in jobs, and in evaluation reports)


@dataclass
class Job:
    """One generation: prompt tokens, which model answers (BASE or an adapter name), how to sample."""

    prompt_ids: list[int]
    target: str
    params: SamplingParams


def generate_all(model: nn.Module, tokenizer, jobs: list[Job], max_batch: int = 8) -> list[str]:
    """The text each job generates (in job order)."""
    if not jobs:
        return []
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    longest = max(len(j.prompt_ids) + j.params.max_tokens for j in jobs) + 1
    # size the KV cache for these jobs only: a cache of the model's whole context per slot would mostly sit unused
    engine = Engine(model, tokenizer, max_batch=min(max_batch, len(jobs)), max_context=min(longest, limit),
                    max_queue=len(jobs) + 1)
    try:
        for j in jobs:
            if len(j.prompt_ids) + 1 >= engine.max_context:
                raise LorakitError(f"a prompt has {len(j.prompt_ids)} tokens but the model's context holds "
                                   f"{engine.max_context}; lower --max-seq-len in `lorakit data prepare`")
        queues: list[queue.Queue] = []
        for j in jobs:
            q: queue.Queue = queue.Queue()
            engine.submit(j.prompt_ids, None if j.target == BASE else j.target, j.params, q.put)
            queues.append(q)
        texts = []
        for q in queues:
            parts = []
            while (event := q.get()).kind == "token":
                parts.append(event.text)
            if event.kind == "error":
                raise LorakitError(f"generation failed: {event.error}")
            texts.append("".join(parts))
        return texts
    finally:
        engine.close()


def sampling(max_tokens: int, temperature: float, seed: int) -> SamplingParams:
    """Evaluation sampling: nucleus 0.95 at `temperature` (0: greedy), seeded per request."""
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=0.95 if temperature > 0 else 1.0,
                          seed=seed)
