"""Frozen quantized linear layers (NF4, int8) that dequantize on the fly, a block of rows at a time.

``y = x W^T + b`` with W stored quantized. The forward and the input gradient
(``dx = dy W``) dequantize W in row chunks of about ``CHUNK_ELEMENTS`` weights into one reused
buffer that the matmul reads right away; no full fp32 copy of W ever exists. W gets no gradient
and nothing is saved for backward but a reference to the layer, so QLoRA keeps only the
quantized weights in memory. These modules expose the protocol `lorakit.adapters.LoraLinear` expects of a
quantized base: ``in_features``, ``out_features``, ``bias``, ``dequantize()`` and ``forward``.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn

from lorakit.quant.int8 import dequantize_int8_rows, quantize_int8
from lorakit.quant.nf4 import BLOCK, NF4Parts, dequantize_absmax, dequantize_nf4_range, quantize_nf4

# Elements of W dequantized per chunk (one reused fp32 buffer). Chosen from one-thread kernel timings
# of 2^19, 2^21 and 2^22-element chunks against the dense matmul (bench/RESULTS_quant.md): wide
# inputs need more rows per chunk for an efficient matmul, smaller chunks mean more small OpenMP
# regions, and 2^22 gains little more.
CHUNK_ELEMENTS = 1 << 21

_SCRATCH = threading.local()  # per thread: {(device, dtype): flat buffer}, see `scratch`


def scratch(numel: int, device: torch.device, dtype: torch.dtype = torch.float32, slot: str = "w") -> torch.Tensor:
    """A flat buffer of `numel` elements, the same memory on every call from this thread (per `slot`,
    device and dtype; it grows to the largest request). A chunk's weights are read right after they
    are written, so one buffer serves every layer: a fresh one per call would be page-faulted afresh
    each time where freed memory goes back to the OS (QLoRA's `--release-memory`)."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    key = (slot, torch.device(device), dtype)
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


class _DequantLinearFn(torch.autograd.Function):
    """x (M, in) -> x W^T (M, out); backward gives dx only (W is frozen and quantized)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "QuantLinear") -> torch.Tensor:
        ctx.layer = layer  # the layer, not a dense W: backward dequantizes again
        return layer.matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return ctx.layer.matmul_transposed(grad), None


class QuantLinear(nn.Module):
    """Base of the quantized linears: chunked matmuls over ``dequantize_rows`` of subclasses."""

    method = ""
    chunk_elements = CHUNK_ELEMENTS  # per instance if set: tests force several chunks on tiny layers

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "QuantLinear":
        """Quantize an `nn.Linear` (its weight (out, in) and optional bias)."""
        return cls.from_weight(linear.weight, linear.bias)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Quantize a dense weight (out, in)."""
        raise NotImplementedError

    # -- subclasses ------------------------------------------------------------------------
    def dequantize_rows(self, start: int, end: int, scales: torch.Tensor | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``[start, end)`` of W, fp32 (end - start, in); `out` is an optional reusable flat buffer."""
        raise NotImplementedError

    def _scales(self) -> torch.Tensor | None:
        """Per-call state shared by every chunk (NF4: the de-double-quantized absmaxes)."""
        return None

    def _row_alignment(self) -> int:
        return 1

    # -- shared ----------------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        """The dense fp32 weight (out, in)."""
        return self.dequantize_rows(0, self.out_features, self._scales())

    def _chunk_rows(self) -> int:
        align = self._row_alignment()
        return max(align, (self.chunk_elements // self.in_features) // align * align)

    def _chunks(self, dtype: torch.dtype):
        """Yield ``(start, end, W[start:end] in dtype)``; one buffer is reused for every chunk."""
        scales = self._scales()
        rows = self._chunk_rows()
        ref = next(self.buffers())
        # + 64 (one NF4 block): a chunk is dequantized in whole blocks, a few values past `end`
        work = scratch(min(rows, self.out_features) * self.in_features + 64, ref.device)
        cast = None if dtype == torch.float32 else scratch(work.numel(), ref.device, dtype, "cast")
        for start in range(0, self.out_features, rows):
            end = min(self.out_features, start + rows)
            w = self.dequantize_rows(start, end, scales, work)
            yield start, end, (w if cast is None else cast[:w.numel()].view_as(w).copy_(w))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, in) -> x W^T (M, out), W dequantized chunk by chunk in x's dtype."""
        out = torch.empty(x.shape[0], self.out_features, dtype=x.dtype, device=x.device)
        for start, end, w in self._chunks(x.dtype):
            torch.mm(x, w.T, out=out[:, start:end])
        return out

    def matmul_transposed(self, grad: torch.Tensor) -> torch.Tensor:
        """grad (M, out) -> grad W (M, in): the input gradient of `matmul`."""
        out = torch.zeros(grad.shape[0], self.in_features, dtype=grad.dtype, device=grad.device)
        for start, end, w in self._chunks(grad.dtype):
            out.addmm_(grad[:, start:end], w)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        lead = x.shape[:-1]
        y = _DequantLinearFn.apply(x.reshape(-1, self.in_features), self)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*lead, self.out_features)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> nn.Linear:
        """A plain frozen `nn.Linear` holding the dequantized weight, cast to `dtype`."""
        weight = self.dequantize()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=weight.device, dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense.requires_grad_(False)

    def quantized_bytes(self) -> int:
        """Bytes of the stored form (buffers and bias)."""
        return sum(t.numel() * t.element_size() for t in [*self.buffers(), *self.parameters()])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {self.method}"


class NF4Linear(QuantLinear):
    """A linear layer whose weight is NF4 with double-quantized block absmaxes (see `nf4`)."""

    method = "nf4"

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "NF4Linear":
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, bias)
        parts = quantize_nf4(weight)
        layer.register_buffer("packed", parts.packed)
        layer.register_buffer("absmax_q", parts.absmax_q)
        layer.register_buffer("absmax_scale", parts.absmax_scale)
        layer.register_buffer("absmax_mean", parts.absmax_mean)
        return layer

    def parts(self) -> NF4Parts:
        """The stored tensors as an `NF4Parts`."""
        return NF4Parts(self.packed, self.absmax_q, self.absmax_scale, self.absmax_mean,
                        self.in_features * self.out_features)

    def _scales(self) -> torch.Tensor:
        return dequantize_absmax(self.parts())

    def _row_alignment(self) -> int:
        # a chunk must start on a block boundary: rows * in_features divisible by 64
        return BLOCK // math.gcd(self.in_features, BLOCK)

    def dequantize_rows(self, start: int, end: int, scales: torch.Tensor | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        absmax = self._scales() if scales is None else scales
        # the chunked matmuls pass `out`: then the packed codes' index goes to a reused buffer too
        index = None if out is None else scratch(out.numel() // 4, out.device, torch.int32, "index")
        flat = dequantize_nf4_range(self.packed, absmax, start * self.in_features, end * self.in_features, out,
                                    index)
        return flat.view(end - start, self.in_features)


class Int8Linear(QuantLinear):
    """A linear layer whose weight is int8 with one fp32 scale per output row (see `int8`)."""

    method = "int8"

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8Linear":
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, bias)
        q, scale = quantize_int8(weight)
        layer.register_buffer("qweight", q)
        layer.register_buffer("scale", scale)
        return layer

    def dequantize_rows(self, start: int, end: int, scales: torch.Tensor | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        return dequantize_int8_rows(self.qweight, self.scale, start, end, out)


QUANT_CLASSES: dict[str, type[QuantLinear]] = {"nf4": NF4Linear, "int8": Int8Linear}
