"""Quantized linear layers: chunked forward/backward equal the dense math on the dequantized W."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit.quant import Int8Linear, NF4Linear


@pytest.mark.parametrize("cls", [NF4Linear, Int8Linear])
@pytest.mark.parametrize("in_f,out_f", [(48, 37), (128, 20), (32, 5)])
def test_chunked_forward_and_input_grad_equal_dense(cls, in_f, out_f):
    torch.manual_seed(0)
    dense = nn.Linear(in_f, out_f)
    layer = cls.from_linear(dense)
    layer.chunk_elements = 3 * in_f  # several chunks, and (for NF4) rows that split 64-blocks
    w = layer.dequantize()
    x = torch.randn(2, 5, in_f, requires_grad=True)
    y = layer(x)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = x_ref @ w.T + dense.bias.detach()
    # same products, summed in another order by the BLAS: fp32 rounding, ~1e-6 of |y|
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in layer.parameters())
    assert len(list(layer.buffers())) >= 2


def test_nf4_layer_is_about_8x_smaller_than_fp32():
    layer = NF4Linear.from_weight(torch.randn(256, 512))
    assert layer.quantized_bytes() < 256 * 512 * 4 / 7.5


def test_to_dense_casts_once_from_fp32():
    layer = NF4Linear.from_weight(torch.randn(16, 64), torch.randn(16))
    dense = layer.to_dense(torch.bfloat16)
    assert isinstance(dense, nn.Linear) and dense.weight.dtype == torch.bfloat16
    assert torch.equal(dense.weight, layer.dequantize().to(torch.bfloat16))
    assert torch.equal(dense.bias, layer.bias.to(torch.bfloat16))
