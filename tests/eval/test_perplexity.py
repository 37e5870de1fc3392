"""Perplexity equals exp(mean NLL) computed independently with a plain forward + F.cross_entropy."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from lorakit.adapters import LoraConfig, add_adapter
from lorakit.data.schema import Sample
from lorakit.eval.perplexity import perplexity_by_book, perplexity_table, summed_nll
from lorakit.infer.batch import BASE
from tests.adapters.helpers import randomize_adapter
from tests.conftest import tiny_model


def samples(seed: int, n: int) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randint(1, 95) for _ in range(rng.randint(3, 40))]
        out.append(Sample(ids, rng.choice([0, 0, rng.randint(1, len(ids) - 1)])))
    return out


def reference_nll(model, items: list[Sample]) -> tuple[float, int]:
    """Sum of NLL over completion tokens, one unpadded sample at a time, straight from the logits."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in items:
            ids = torch.tensor([s.ids])
            logits = model(input_ids=ids).logits[0].double()
            first = max(s.prompt_len, 1)  # the first token has no prediction; prompt tokens are not scored
            total += float(F.cross_entropy(logits[first - 1:-1], ids[0, first:], reduction="sum"))
            count += len(s.ids) - first
    return total, count


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_perplexity_matches_an_independent_computation(arch):
    model = tiny_model(arch)
    books = {"a": samples(1, 7), "b": samples(2, 5)}
    result = perplexity_by_book(model, books, pad_id=0)
    pooled_sum, pooled_n = 0.0, 0
    for book, items in books.items():
        ref_sum, ref_n = reference_nll(model, items)
        assert result["books"][book]["tokens"] == ref_n
        assert result["books"][book]["ppl"] == pytest.approx(math.exp(ref_sum / ref_n), rel=1e-5)
        pooled_sum, pooled_n = pooled_sum + ref_sum, pooled_n + ref_n
    assert result["overall"]["tokens"] == pooled_n
    assert result["overall"]["nll"] == pytest.approx(pooled_sum / pooled_n, rel=1e-5)


def test_batching_does_not_change_the_result():
    model = tiny_model("llama")
    items = samples(3, 12)
    one_by_one = summed_nll(model, items, pad_id=0, batch_tokens=1)
    batched = summed_nll(model, items, pad_id=0, batch_tokens=10_000)
    assert one_by_one[1] == batched[1]
    assert one_by_one[0] == pytest.approx(batched[0], rel=1e-5)


def test_targets_base_and_adapter():
    model = tiny_model("llama")
    books = {"a": samples(4, 6)}
    plain = perplexity_by_book(model, books, pad_id=0)["overall"]["nll"]
    add_adapter(model, LoraConfig(r=4, target_modules="all-linear"), "style")
    randomize_adapter(model, "style")  # B starts at zero: make the update real
    table = perplexity_table(model, [BASE, "style"], books, pad_id=0)
    assert table[BASE]["overall"]["nll"] == pytest.approx(plain, rel=1e-6)
    assert table["style"]["overall"]["nll"] != pytest.approx(plain, rel=1e-3)
    assert table["style"]["overall"]["ppl"] == pytest.approx(math.exp(table["style"]["overall"]["nll"]))
