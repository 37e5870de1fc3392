"""LoRA-path dropout: `nn.Dropout`'s distribution and gradient with a cheaper mask."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.adapters.dropout import LoraDropout, dropped_down, keep_mask


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


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_dropped_down_equals_dropout_then_the_factor_with_the_same_mask(p):
    """One node for scaling * A(dropout(x)): the same values and gradients as the two modules."""
    x0, a0 = torch.randn(3, 40, 24, dtype=torch.float64), torch.randn(8, 24, dtype=torch.float64)
    drop = LoraDropout(p).train()
    outs = []
    for fused in (False, True):
        x, a = x0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        torch.manual_seed(4)  # the same draws: drop_mask is keep_mask's complement
        y = dropped_down(drop, x, a, 1.5) if fused else torch.nn.functional.linear(drop(x), a) * 1.5
        (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).cos()).sum().backward()
        outs.append((y.detach(), x.grad, a.grad))
    for ref, got in zip(*outs):
        assert torch.allclose(ref, got, rtol=1e-12, atol=1e-12)


def test_dropped_down_keeps_x_and_a_byte_mask_not_a_dropped_copy():
    x = torch.randn(64, 96, requires_grad=True)
    a = torch.randn(4, 96, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        dropped_down(LoraDropout(0.1).train(), x, a, 2.0)
    big = [t for t in kept if t.numel() == x.numel()]
    assert any(t is x for t in big)
    assert all(t is x or t.dtype == torch.bool for t in big)


def test_dropped_down_is_plain_in_eval_mode_and_without_grad():
    x, a = torch.randn(5, 12), torch.randn(3, 12)
    want = torch.nn.functional.linear(x, a) * 0.5
    assert torch.allclose(dropped_down(LoraDropout(0.2).eval(), x, a, 0.5), want)
    assert torch.allclose(dropped_down(torch.nn.Identity(), x, a, 0.5), want)
    with torch.no_grad():  # training mode without autograd still drops
        y = dropped_down(LoraDropout(0.5).train(), x, a, 0.5)
    assert not torch.allclose(y, want)
