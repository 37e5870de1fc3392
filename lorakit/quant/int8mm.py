"""Frozen linear layers whose two GEMMs run in int8: the ``int8`` training precision (issue 18).

A LoRA run never needs the gradient of a frozen weight W, only ``y = x W^T`` forward and
``dx = dy W`` backward. Both run here as int8 x int8 GEMMs with int32 accumulation, as SwitchBack
does for the forward and input-gradient GEMMs (Wortsman et al. 2023, "Stable and low-precision
training for large-scale vision-language models", sec. 2): W is quantized once per output
channel (and W^T once per input channel; 7 bits, see `int8_kernel.WEIGHT_LEVELS`), the incoming
activation or gradient per row (token) on the fly. Adapters, norms, attention, the loss and the optimizer stay fp32.

The GEMM, with the per-token scales and fp32 outlier channels that hold its quality, is
`lorakit.runtime.int8_kernel.int8_matmul` (which kernel, and why, is said there).
"""

from __future__ import annotations

import torch

from lorakit.quant.linear import Int8Linear
from lorakit.runtime.int8_kernel import int8_matmul, pack


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
