"""4-bit NormalFloat (NF4) with double-quantized block scales (Dettmers et al. 2023, "QLoRA").

A weight is flattened row-major and cut into blocks of 64 values. Each block stores 16-level
indices into the NF4 code book (two per byte, the even element in the high nibble) and its
absmax. The absmaxes are themselves quantized ("double quantization", paper sec. 3): the mean is
subtracted (they are all positive) and each group of 256 is stored as int8 with one fp32 scale.
The paper stores the second level as 8-bit floats; symmetric int8 is used here because its error
bound is simple (half a step, ``max|c - mean| / 254``) and it costs the same 8 bits.
Footprint: 4 + 8/64 + 32/(64*256) = 4.127 bits per weight.

Dequantization is a table lookup: two packed bytes (four weights) index a 65536 x 4 fp32 table,
so one `index_select` writes four weights per index; a per-block multiply then applies the scale.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

BLOCK = 64  # QLoRA paper, sec. 3 / 4: block size 64 for the weights
DQ_BLOCK = 256  # QLoRA paper, sec. 3: block size 256 for the quantized absmaxes

# QLoRA paper, appendix E: the NF4 data type (quantiles of N(0, 1), normalised to [-1, 1], with
# an exact zero). tests/quant re-derive these from the normal quantile function.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

_QUAD_TABLES: dict[torch.device, torch.Tensor] = {}


@dataclass
class NF4Parts:
    """The stored form of one NF4 tensor of `numel` weights (padded to whole blocks)."""

    packed: torch.Tensor  # uint8 (n_blocks * 32,): two 4-bit code indices per byte
    absmax_q: torch.Tensor  # int8 (n_blocks,): block absmax - mean, quantized per DQ group
    absmax_scale: torch.Tensor  # fp32 (n_dq_groups,)
    absmax_mean: torch.Tensor  # fp32 (): mean of the block absmaxes
    numel: int


def code_book(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 16 NF4 levels, ascending, fp32 (16,)."""
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def _quad_table(device: torch.device) -> torch.Tensor:
    """(65536, 4) fp32: the four weights encoded by two packed bytes read as one native uint16."""
    table = _QUAD_TABLES.get(device)
    if table is None:
        code = code_book(device)
        v = torch.arange(65536, device=device)
        first, second = (v & 255, v >> 8) if sys.byteorder == "little" else (v >> 8, v & 255)
        table = torch.stack([code[first >> 4], code[first & 15], code[second >> 4], code[second & 15]], 1)
        _QUAD_TABLES[device] = table = table.contiguous()
    return table


def _quantize_absmax(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization: (n_blocks,) fp32 -> int8 (n_blocks,), scales (groups,), mean ()."""
    mean = absmax.mean()
    centred = absmax - mean
    n = centred.numel()
    groups = -(-n // DQ_BLOCK)
    padded = torch.zeros(groups * DQ_BLOCK, dtype=torch.float32, device=absmax.device)
    padded[:n] = centred
    scale = padded.view(groups, DQ_BLOCK).abs().amax(dim=1) / 127
    q = torch.round(padded.view(groups, DQ_BLOCK) / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None])
    return q.clamp_(-127, 127).to(torch.int8).view(-1)[:n], scale, mean


def dequantize_absmax(parts: NF4Parts) -> torch.Tensor:
    """The block absmaxes back in fp32: (n_blocks,)."""
    scale = parts.absmax_scale.repeat_interleave(DQ_BLOCK)[: parts.absmax_q.numel()]
    return parts.absmax_q.float() * scale + parts.absmax_mean


def quantize_nf4(weight: torch.Tensor, chunk_blocks: int = 1 << 16) -> NF4Parts:
    """Quantize any-shaped `weight` to NF4 (nearest code per value, scaled by the block absmax).

    Works through `chunk_blocks` blocks at a time so the temporaries stay small on big matrices.
    """
    flat = weight.detach().reshape(-1)
    numel = flat.numel()
    n_blocks = -(-numel // BLOCK)
    device = flat.device
    code = code_book(device)
    midpoints = (code[1:] + code[:-1]) / 2
    packed = torch.empty(n_blocks * BLOCK // 2, dtype=torch.uint8, device=device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=device)
    for b0 in range(0, n_blocks, chunk_blocks):
        b1 = min(n_blocks, b0 + chunk_blocks)
        part = flat[b0 * BLOCK : b1 * BLOCK].float()
        if part.numel() < (b1 - b0) * BLOCK:  # the last block is zero-padded
            part = torch.cat([part, part.new_zeros((b1 - b0) * BLOCK - part.numel())])
        blocks = part.view(-1, BLOCK)
        amax = blocks.abs().amax(dim=1)
        absmax[b0:b1] = amax
        normalised = blocks / amax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        idx = torch.bucketize(normalised, midpoints).view(-1, 2).to(torch.uint8)
        packed[b0 * BLOCK // 2 : b1 * BLOCK // 2] = (idx[:, 0] << 4) | idx[:, 1]
    absmax_q, absmax_scale, absmax_mean = _quantize_absmax(absmax)
    return NF4Parts(packed, absmax_q, absmax_scale, absmax_mean, numel)


def dequantize_nf4_range(packed: torch.Tensor, absmax: torch.Tensor, start: int, end: int,
                         out: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
    """Weights ``[start, end)`` of the flattened tensor, fp32 (end - start,).

    `start` must be a multiple of 64 (a block boundary); `absmax` is `dequantize_absmax`'s output.
    `out`, if given, is a reusable fp32 buffer of at least the padded length: writing into it
    avoids a fresh allocation, whose page faults cost more than the lookup itself on a CPU.
    `index`, likewise, a reusable int32 buffer of at least a quarter of that length.
    """
    b0, b1 = start // BLOCK, -(-end // BLOCK)
    n = (b1 - b0) * BLOCK
    pairs = packed[b0 * BLOCK // 2 : b1 * BLOCK // 2].view(torch.int16)  # two bytes: four codes
    quads = torch.empty(pairs.numel(), dtype=torch.int32, device=packed.device) if index is None else index[:pairs.numel()]
    quads.copy_(pairs).bitwise_and_(0xFFFF)  # the uint16 value of each pair, as the table's row
    buf = torch.empty(n, dtype=torch.float32, device=packed.device) if out is None else out[:n]
    torch.index_select(_quad_table(packed.device), 0, quads, out=buf.view(-1, 4))
    buf.view(-1, BLOCK).mul_(absmax[b0:b1, None])
    return buf[: end - start]


def dequantize_nf4(parts: NF4Parts) -> torch.Tensor:
    """All `numel` weights, fp32, flat (numel,)."""
    return dequantize_nf4_range(parts.packed, dequantize_absmax(parts), 0, parts.numel)
