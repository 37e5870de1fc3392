"""DoRA's magnitude vector (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation").

The adapted weight is ``m * (W + s BA) / ||W + s BA||`` with the norm taken per output
feature over the input dimension. As in the paper (sec. 4.3) and PEFT, the norm is
detached from the graph: it tracks the update but receives no gradient.
"""

from __future__ import annotations

import torch
from torch import nn


def row_norm(weight_out_in: torch.Tensor, lora_weight: torch.Tensor, scaling: float) -> torch.Tensor:
    """||W + s * BA|| per output row: (out, in), (out, in) -> (out,)."""
    return torch.linalg.norm(weight_out_in + scaling * lora_weight, dim=1).to(weight_out_in.dtype)


class DoraMagnitude(nn.Module):
    """Holds the learnable magnitude `weight` (out,) of one adapter on one layer."""

    def __init__(self, out_features: int, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self._merge_factor: torch.Tensor | None = None  # kept between merge and unmerge

    @classmethod
    def from_weights(cls, weight_out_in: torch.Tensor, lora_weight: torch.Tensor, scaling: float) -> "DoraMagnitude":
        """Initialise m = ||W + s BA|| so the adapted layer starts equal to the base."""
        with torch.no_grad():
            norm = row_norm(weight_out_in.float(), lora_weight.float(), scaling)
        module = cls(norm.shape[0], device=norm.device, dtype=lora_weight.dtype)
        with torch.no_grad():
            module.weight.copy_(norm)
        return module

    def scale(self, weight_out_in: torch.Tensor, lora_weight: torch.Tensor, scaling: float) -> torch.Tensor:
        """m / ||W + s BA|| (norm detached), shaped (out,) to broadcast over (..., out)."""
        norm = row_norm(weight_out_in, lora_weight.detach(), scaling).detach()
        return self.weight / norm

    def merge_factor(self, weight: torch.Tensor, delta: torch.Tensor, out_dim: int) -> torch.Tensor:
        """Factor that turns ``W + delta`` into the DoRA weight, in the base weight's layout.

        `weight` and `delta` are laid out like the base weight; `out_dim` says which axis is output.
        The factor is remembered for `pop_merge_factor`, since after merging W is gone.
        """
        w_oi, d_oi = (weight, delta) if out_dim == 0 else (weight.T, delta.T)
        factor = self.weight.detach().float() / row_norm(w_oi, d_oi, 1.0)
        factor = factor.view(-1, 1) if out_dim == 0 else factor.view(1, -1)
        self._merge_factor = factor
        return factor

    def pop_merge_factor(self) -> torch.Tensor:
        """The factor the last `merge_factor` returned (used by unmerge)."""
        if self._merge_factor is None:
            raise RuntimeError("DoRA unmerge without a preceding merge")
        factor, self._merge_factor = self._merge_factor, None
        return factor
