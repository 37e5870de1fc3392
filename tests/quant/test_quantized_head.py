"""A frozen output head stored in int8 (`load_quantized(..., head="int8")`, what `lorakit train
--method qlora` loads): the chunked loss reads it chunk by chunk and equals the loss of its
dequantized twin; only an untied head is quantized."""

from __future__ import annotations

import pytest
import torch

from lorakit.quant import load_quantized
from lorakit.quant.linear import Int8Linear
from lorakit.train.loss import chunked_cross_entropy
from tests.conftest import tiny_model


@pytest.mark.parametrize("chunk", [5, 1024])
def test_loss_and_input_gradient_of_an_int8_head_equal_its_dequantized_twin(chunk):
    torch.manual_seed(0)
    head = Int8Linear.from_weight(torch.randn(300, 16))
    dense = head.to_dense()
    hidden = torch.randn(2, 9, 16)
    labels = torch.randint(0, 300, (2, 9))
    labels[0, :3] = -100  # unscored positions
    losses, grads = [], []
    for h_mod in (head, dense):
        h = hidden.clone().requires_grad_(True)
        loss, n = chunked_cross_entropy(h, h_mod, labels, chunk=chunk)
        loss.backward()
        losses.append(loss.detach())
        grads.append(h.grad)
        assert n == 15
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    assert grads[0][0, :3].abs().max() == 0 and grads[0][1].abs().max() > 0


@pytest.mark.parametrize(("arch", "quantized"), [("qwen2", True), ("llama", False)])
def test_only_an_untied_head_is_quantized(arch, quantized, tmp_path):
    model = tiny_model(arch)
    model.save_pretrained(tmp_path)
    loaded, _ = load_quantized(str(tmp_path), "nf4", head="int8")
    assert isinstance(loaded.get_output_embeddings(), Int8Linear) is quantized
    assert model.config.tie_word_embeddings is not quantized
    ids = torch.randint(0, 96, (1, 7))
    with torch.no_grad():  # the head's int8 rounding is small beside the logits
        gap = (loaded(ids).logits - load_quantized(str(tmp_path), "nf4")[0](ids).logits).abs().max()
    assert bool(gap > 0) == quantized and gap < 0.05


def test_under_bf16_autocast_an_int8_head_runs_its_gemms_in_bf16_like_a_dense_head():
    torch.manual_seed(1)
    head = Int8Linear.from_weight(torch.randn(300, 16))
    dense = head.to_dense()
    hidden = torch.randn(1, 40, 16)
    labels = torch.randint(0, 300, (1, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_cross_entropy(hidden, head, labels)[0]
        want = chunked_cross_entropy(hidden, dense, labels)[0]
    fp32 = chunked_cross_entropy(hidden, dense, labels)[0]
    assert got == want and got != fp32  # bf16 GEMMs on both, the same weights in bf16


def test_int8_quantization_a_few_rows_at_a_time_equals_it_at_once():
    from lorakit.quant.int8 import quantize_int8

    torch.manual_seed(2)
    w = torch.randn(37, 24)
    w[5] = 0.0  # a zero row keeps a zero scale and zero values
    whole, some = quantize_int8(w, chunk_elements=1 << 30), quantize_int8(w, chunk_elements=50)
    assert torch.equal(whole[0], some[0]) and torch.equal(whole[1], some[1])
    assert whole[1][5] == 0 and whole[0][5].abs().max() == 0
