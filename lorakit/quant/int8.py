"""int8 weight-only quantization: symmetric, one fp32 scale per output row (absmax / 127).

Per-row scales are the LLM.int8() paper's vector-wise quantization (Dettmers et al. 2022, sec. 3.1)
without its fp16 outlier path: the error per weight is at most half a step, ``absmax_row / 254``.
"""

from __future__ import annotations

import torch


def quantize_int8(weight: torch.Tensor, chunk_elements: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in), fp32 scales (out,).

    A few rows at a time (about `chunk_elements` values), so the fp32 temporaries of a large
    matrix (an output head) never exist whole; each row is quantized on its own either way."""
    out_f, in_f = weight.shape
    q = torch.empty((out_f, in_f), dtype=torch.int8, device=weight.device)
    scale = torch.empty(out_f, dtype=torch.float32, device=weight.device)
    rows = max(1, chunk_elements // max(1, in_f))
    for start in range(0, out_f, rows):
        w = weight[start:start + rows].detach().float()
        s = w.abs().amax(dim=1) / 127
        scale[start:start + rows] = s
        q[start:start + rows] = torch.round(w / s.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).clamp_(-127, 127)
    return q, scale


def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor, start: int, end: int,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``[start, end)`` of the dense weight, fp32 (end - start, in).

    `out`, if given, is a reusable flat fp32 buffer of at least that many elements.
    """
    rows = q[start:end]
    buf = torch.empty(rows.shape, dtype=torch.float32, device=q.device) if out is None else out[: rows.numel()].view(rows.shape)
    return buf.copy_(rows).mul_(scale[start:end, None])
