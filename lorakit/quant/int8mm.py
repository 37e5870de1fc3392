"""Frozen linear layers whose two GEMMs run in int8: the ``int8`` training precision (issue 18).

A LoRA run never needs the gradient of a frozen weight W, only ``y = x W^T`` forward and
``dx = dy W`` backward. Both run here as int8 x int8 GEMMs with int32 accumulation, as SwitchBack
does for the forward and input-gradient GEMMs (Wortsman et al. 2023, "Stable and low-precision
training for large-scale vision-language models", sec. 2): W is quantized once per output
channel (and W^T once per input channel; 7 bits, see `int8_kernel.WEIGHT_LEVELS`), the incoming
activation or gradient per row (token) on the fly. Adapters, norms, attention, the loss and the optimizer stay fp32.

Two details hold the quality (bench/RESULTS.md, round 6, has the losses):
- per-token scales: the kernel quantizes its input with one scale per tensor, so each row is
  divided by its absmax first and the output rows multiplied back; one outlier token then costs
  only its own row its resolution.
- outlier channels in fp32: a few input channels of a transformer's activations are far larger
  than the rest (Dettmers et al. 2022, LLM.int8(), sec. 3.2), and int8 rows scaled by them lose
  the others. The ``1 / OUTLIER_SHARE`` channels with the largest absmax in each call are zeroed
  in the int8 input and computed as a small fp32 GEMM against those columns of W.

The GEMM itself is `lorakit.runtime.int8_kernel` (which kernel, and why, is said there).
"""

from __future__ import annotations

import torch

from lorakit.quant.linear import Int8Linear
from lorakit.runtime.int8_kernel import gemm, pack

OUTLIER_SHARE = 64  # 1 in 64 input channels (at least one) computed in fp32; see the module docstring




def int8_matmul(x: torch.Tensor, packed, columns) -> torch.Tensor:
    """x (M, in) -> x W^T (M, out): int8 GEMM over all but the outlier channels of x, fp32 for those.

    `packed` is W packed by `int8_kernel.pack`; `columns(idx)` returns W[:, idx] (out, len(idx)) in fp32.
    """
    magnitude = x.abs()  # one pass serves both: the outlier channels' absmax, then the rows' without them
    idx = magnitude.amax(dim=0).topk(max(1, x.shape[1] // OUTLIER_SHARE)).indices
    scale = magnitude.index_fill_(1, idx, 0.0).amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
    rest = x.clone(memory_format=torch.contiguous_format).index_fill_(1, idx, 0.0)
    y = gemm(rest.div_(scale), packed).mul_(scale)
    return y.addmm_(x[:, idx], columns(idx).T)


class Int8MMLinear(Int8Linear):
    """A frozen linear with int8 weights (per-row scales, as `Int8Linear`) computed by int8 GEMMs.

    ``qweight``/``scale`` stay the stored form (merge, export and `dequantize` read them); the
    kernel's packed copies of W and W^T are derived from the dense weight once, at construction.
    """

    method = "int8mm"

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8MMLinear":
        layer = super().from_weight(weight, bias)  # qweight and scale, as Int8Linear stores them
        layer._packed = pack(weight)
        layer._packed_t = pack(weight.detach().T)
        return layer

    def _columns(self, idx: torch.Tensor) -> torch.Tensor:
        """W[:, idx] in fp32 (out, len(idx))."""
        return self.qweight[:, idx].float().mul_(self.scale[:, None])

    def _rows_t(self, idx: torch.Tensor) -> torch.Tensor:
        """W^T[:, idx] = W[idx, :]^T in fp32 (in, len(idx))."""
        return self.qweight[idx].float().mul_(self.scale[idx, None]).T

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, in) -> x W^T (M, out) in int8 GEMMs (x fp32)."""
        return int8_matmul(x.float(), self._packed, self._columns)

    def matmul_transposed(self, grad: torch.Tensor) -> torch.Tensor:
        """grad (M, out) -> grad W (M, in): the input gradient, also in int8 GEMMs."""
        return int8_matmul(grad.float(), self._packed_t, self._rows_t)
