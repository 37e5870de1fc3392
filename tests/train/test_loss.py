"""The memory-lean loss equals plain cross-entropy, and masked positions get no gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorakit.data.schema import Sample
from lorakit.train.attention import use_attention
from lorakit.train.batches import packed_batch, padded_batch
from lorakit.train.loss import IGNORE, chunked_cross_entropy, shift_labels
from lorakit.train.objective import causal_lm_loss
from tests.conftest import tiny_model


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [3, 1024])
def test_chunked_ce_equals_full_ce_in_value_and_gradient(chunk, softcap):
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = IGNORE
    loss, n = chunked_cross_entropy(hidden, head, labels, chunk=chunk, softcap=softcap)
    loss.backward()
    got = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = head.weight.grad = head.bias.grad = None

    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    ref.backward()
    assert n == int((labels != IGNORE).sum())
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
    for g, r in zip(got, (hidden.grad, head.weight.grad, head.bias.grad)):
        assert (g - r).abs().max() <= 1e-6


def test_masked_positions_get_exactly_zero_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(1, 8, 16, requires_grad=True)
    head = torch.nn.Linear(16, 40, bias=False)
    ids = torch.randint(0, 40, (1, 8))
    mask = torch.tensor([[False, False, False, True, True, True, True, True]])  # 3 prompt tokens
    labels = shift_labels(ids, mask)
    loss, n = chunked_cross_entropy(hidden, head, labels)
    loss.backward()
    assert n == 5  # positions 2..6 predict tokens 3..7
    assert torch.equal(hidden.grad[0, :2], torch.zeros(2, 16))
    assert torch.equal(hidden.grad[0, 7], torch.zeros(16))  # the last position predicts nothing
    assert (hidden.grad[0, 2:7].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("attention", ["sdpa", "eager", "eager_recompute"])  # `lorakit train --attention`
@pytest.mark.parametrize("mask_prompt", [False, True])
def test_packing_gives_the_same_per_sample_loss(mask_prompt, attention):
    model = tiny_model("llama")
    use_attention(model, attention)
    g = torch.Generator().manual_seed(0)
    samples = [Sample(torch.randint(1, 96, (n,), generator=g).tolist(), p) for n, p in ((7, 2), (12, 3), (5, 0))]
    packed_loss, packed_n = causal_lm_loss(model, packed_batch([samples], pad_id=0, mask_prompt=mask_prompt))
    total, count = 0.0, 0
    for s in samples:
        loss, n = causal_lm_loss(model, padded_batch([s], pad_id=0, mask_prompt=mask_prompt))
        total, count = total + loss.item(), count + n
    assert packed_n == count
    assert abs(packed_loss.item() - total) / count <= 1e-5


def test_padding_does_not_change_the_loss():
    model = tiny_model("qwen2")
    g = torch.Generator().manual_seed(1)
    a, b = (Sample(torch.randint(1, 96, (n,), generator=g).tolist()) for n in (6, 11))
    together, n = causal_lm_loss(model, padded_batch([a, b], pad_id=0, mask_prompt=False))
    alone = sum(causal_lm_loss(model, padded_batch([s], pad_id=0, mask_prompt=False))[0].item() for s in (a, b))
    assert n == 5 + 10
    assert abs(together.item() - alone) <= 1e-5 * alone
