"""LoRA-path dropout: `nn.Dropout`'s distribution and gradient with a cheaper mask."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.adapters.dropout import LoraDropout, keep_mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_the_keep_rate_is_one_minus_p(p):
    torch.manual_seed(0)
    n = 1 << 20
    kept = keep_mask(torch.Size([n]), p, torch.device("cpu")).double().mean().item()
    rounded = round(p * 65536) / 65536
    assert abs(kept - (1 - rounded)) < 5 * math.sqrt(p * (1 - p) / n)  # five standard deviations


def test_neighbouring_elements_are_independent():
    """Four mask values come from one 64-bit draw: their pairwise agreement is what independence gives."""
    torch.manual_seed(1)
    p, n = 0.5, 1 << 20
    m = keep_mask(torch.Size([n]), p, torch.device("cpu")).view(-1, 4).double()
    for a, b in ((0, 1), (1, 2), (2, 3), (0, 3)):
        both = (m[:, a] * m[:, b]).mean().item()
        assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / m.shape[0])


def test_forward_scales_kept_values_and_backward_uses_the_same_mask():
    torch.manual_seed(2)
    x = (torch.rand(64, 96) + 0.5).requires_grad_(True)  # no zeros: a zero output means dropped
    drop = LoraDropout(0.25).train()
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75))


def test_eval_mode_and_p_zero_are_the_identity_and_a_seed_repeats_the_mask():
    x = torch.randn(8, 16)
    assert LoraDropout(0.3).eval()(x) is x and LoraDropout(0.0).train()(x) is x
    torch.manual_seed(3)
    a = LoraDropout(0.3).train()(x)
    torch.manual_seed(3)
    assert torch.equal(a, LoraDropout(0.3).train()(x))
    with pytest.raises(ValueError):
        LoraDropout(1.0)
