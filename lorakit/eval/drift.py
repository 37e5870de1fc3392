"""Drift: how much an adapter changes the model on everyday requests it was not trained for.

The base model answers a fixed set of general prompts greedily; then the base and each
adapter score those answers (mean NLL per answer token). An adapter that left general
behaviour alone scores the base's own answers about as well as the base does; a narrow,
over-fitted adapter finds them surprising. Reported as the relative change in NLL (%).
"""

from __future__ import annotations

from torch import nn

from lorakit.data.schema import Sample
from lorakit.eval.perplexity import summed_nll, target_context
from lorakit.infer.batch import BASE, Job, generate_all, sampling
from lorakit.infer.prompts import encode_request

EVERYDAY_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "How do I boil an egg?",
    "Write a short email asking my manager for a day off on Friday.",
    "Explain what photosynthesis is in two sentences.",
    "What are the health benefits of walking every day?",
    "Translate 'good morning' into Spanish and German.",
    "How many minutes are there in a day? Show the calculation.",
    "Suggest a name for a small coffee shop.",
    "What is the difference between weather and climate?",
)


def base_answers(model: nn.Module, tokenizer, prompts: tuple[str, ...] = EVERYDAY_PROMPTS,
                 max_new_tokens: int = 48) -> list[Sample]:
    """Each prompt followed by the base model's greedy answer, as scorable samples."""
    encoded = [encode_request(tokenizer, p) for p in prompts]
    texts = generate_all(model, tokenizer, [Job(ids, BASE, sampling(max_new_tokens, 0.0, 0)) for ids in encoded])
    samples = []
    for ids, text in zip(encoded, texts):
        # tokenized on its own, as `lorakit data prepare` tokenizes completions
        answer = tokenizer(text, add_special_tokens=False).input_ids or [tokenizer.eos_token_id]
        samples.append(Sample(ids + answer, len(ids)))
    return samples


def mean_nll(model: nn.Module, samples: list[Sample], pad_id: int) -> float:
    """Mean NLL per answer token of `model` (as it runs now) over `samples`."""
    total, count = summed_nll(model, samples, pad_id)
    return total / max(count, 1)


def drift(model: nn.Module, tokenizer, targets: list[str], pad_id: int, max_new_tokens: int = 48,
          prompts: tuple[str, ...] = EVERYDAY_PROMPTS) -> dict:
    """NLL of the base's answers under each target, and each adapter's change vs the base in %."""
    samples = base_answers(model, tokenizer, prompts, max_new_tokens)
    nll = {}
    for target in [BASE, *[t for t in targets if t != BASE]]:
        with target_context(model, target):
            nll[target] = mean_nll(model, samples, pad_id)
    change = {t: 100.0 * (v - nll[BASE]) / nll[BASE] if nll[BASE] else 0.0 for t, v in nll.items() if t != BASE}
    return {"prompts": list(prompts), "answer_tokens": sum(len(s.ids) - s.prompt_len for s in samples),
            "nll": nll, "change_pct": change}
