"""NF4 / int8 storage: code book, per-block error bounds, packing, odd sizes."""

from __future__ import annotations

import torch

from lorakit.quant.int8 import dequantize_int8_rows, quantize_int8
from lorakit.quant.nf4 import BLOCK, DQ_BLOCK, NF4_CODE, dequantize_absmax, dequantize_nf4, quantize_nf4


def test_code_book_is_the_papers_normal_quantiles():
    # QLoRA appendix E / bitsandbytes create_normal_map: 8 positive and 7 negative quantiles of
    # N(0, 1) between 1 - delta and 1/2, plus an exact 0, scaled to [-1, 1]; delta's midpoint
    # offset is 0.9677083 = ((1 - 1/30) + (1 - 1/32)) / 2. The probabilities were float32 there.
    offset = 0.9677083
    ppf = lambda p: torch.special.ndtri(p.double())  # noqa: E731
    pos = ppf(torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1])
    neg = -ppf(torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1])
    values = torch.sort(torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg])).values
    values = values / values.abs().max()
    # the paper prints float32 values: agreement to half a float32 ulp at 1.0 (2^-24 = 6e-8)
    assert torch.allclose(values, torch.tensor(NF4_CODE, dtype=torch.float64), atol=2**-24, rtol=0)
    assert len(NF4_CODE) == 16 and NF4_CODE[7] == 0.0 and list(NF4_CODE) == sorted(NF4_CODE)


def _error_bound_per_block(w: torch.Tensor) -> torch.Tensor:
    """|w - deq(q(w))| bound per block: half the widest code gap times absmax, plus the
    double-quantization error of the absmax itself (half an int8 step of its group, |code| <= 1)."""
    code = torch.tensor(NF4_CODE)
    half_gap = (code[1:] - code[:-1]).max() / 2
    flat = torch.cat([w.reshape(-1), w.new_zeros((-w.numel()) % BLOCK)])
    absmax = flat.view(-1, BLOCK).abs().amax(1)
    centred = absmax - absmax.mean()
    pad = torch.cat([centred, centred.new_zeros((-centred.numel()) % DQ_BLOCK)])
    step = pad.view(-1, DQ_BLOCK).abs().amax(1) / 127
    dq_err = (step / 2).repeat_interleave(DQ_BLOCK)[: absmax.numel()]
    # 1e-6 relative slack: fp32 rounding in scale/divide/multiply
    return absmax * half_gap + dq_err + 1e-6 * absmax


def test_quantize_dequantize_error_within_bound_per_block():
    torch.manual_seed(0)
    w = torch.randn(300, 129) * torch.rand(300, 1) * 3  # rows of very different scales, ragged last block
    parts = quantize_nf4(w)
    deq = dequantize_nf4(parts).view_as(w)
    err = torch.cat([(deq - w).reshape(-1), w.new_zeros((-w.numel()) % BLOCK)]).view(-1, BLOCK).abs().amax(1)
    bound = _error_bound_per_block(w)
    assert (err <= bound).all(), f"worst block exceeds bound by {(err - bound).max()}"
    # and the bound is not vacuous: typical error well under a tenth of the block absmax
    assert err.mean() < 0.1 * w.abs().max()


def test_each_value_takes_the_nearest_code():
    torch.manual_seed(1)
    w = torch.randn(64 * 40)
    parts = quantize_nf4(w)
    absmax = dequantize_absmax(parts).repeat_interleave(BLOCK)
    # recover code indices from the dequantized values, compare with the exhaustive nearest code
    true_absmax = w.view(-1, BLOCK).abs().amax(1).repeat_interleave(BLOCK)
    code = torch.tensor(NF4_CODE)
    nearest = (w[:, None] / true_absmax[:, None] - code).abs().argmin(1)
    stored = (dequantize_nf4(parts)[:, None] / absmax[:, None] - code).abs().argmin(1)
    assert torch.equal(nearest, stored)


def test_exact_code_values_round_trip_and_zero_blocks():
    code = torch.tensor(NF4_CODE)
    w = torch.cat([code.repeat(4) * 2.5, torch.zeros(64)])  # one block of codes * 2.5, one all-zero
    deq = dequantize_nf4(quantize_nf4(w))
    # only the absmax goes through int8: with two blocks its error is half a step of |2.5 - 1.25|
    assert torch.allclose(deq[:64], w[:64], atol=1.25 / 127 / 2 + 1e-6)
    assert torch.equal(deq[64:], torch.zeros(64))


def test_storage_is_4_127_bits_per_weight():
    parts = quantize_nf4(torch.randn(1024, 1024))
    bits = 8 * sum(t.numel() * t.element_size() for t in (parts.packed, parts.absmax_q, parts.absmax_scale, parts.absmax_mean))
    assert abs(bits / (1024 * 1024) - (4 + 8 / 64 + 32 / (64 * 256))) < 1e-4


def test_int8_error_is_at_most_half_a_step_per_row():
    torch.manual_seed(2)
    w = torch.randn(37, 53) * torch.rand(37, 1)
    q, scale = quantize_int8(w)
    deq = dequantize_int8_rows(q, scale, 0, 37)
    assert ((deq - w).abs() <= scale[:, None] / 2 + 1e-6 * scale[:, None] * 127).all()
    assert torch.equal(dequantize_int8_rows(q, scale, 5, 9), deq[5:9])

