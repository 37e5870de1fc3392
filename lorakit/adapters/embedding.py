"""LoRA on `nn.Embedding`: a low-rank update of the lookup table.

PEFT's layout: ``lora_embedding_A`` (r, num_embeddings) starts at zero and
``lora_embedding_B`` (dim, r) is normal, so the output starts equal to the base's
(the reverse of the Linear init, as in the LoRA reference code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters.config import LoraConfig
from lorakit.adapters.dora import DoraMagnitude
from lorakit.adapters.layers import LoraLayer


class LoraEmbedding(LoraLayer):
    """Wraps an `nn.Embedding` (or a subclass that scales its output, like Gemma's)."""

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.num_embeddings, self.embedding_dim = base_layer.weight.shape
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    @classmethod
    def from_base(cls, base_layer: nn.Embedding, name: str, config: LoraConfig,
                  init_weights: bool = True) -> "LoraEmbedding":
        """Wrap `base_layer` and add adapter `name`."""
        layer = cls(base_layer)
        layer.add_adapter(name, config, init_weights)
        return layer

    def _adapter_attrs(self) -> tuple[str, ...]:
        return ("lora_embedding_A", "lora_embedding_B")

    @staticmethod
    def param_shapes(base_layer: nn.Embedding, config: LoraConfig) -> dict[str, tuple[int, ...]]:
        """Saved key -> shape of one adapter on `base_layer` (used to check a file before loading)."""
        num, dim = base_layer.weight.shape
        shapes = {"lora_embedding_A": (config.r, num), "lora_embedding_B": (dim, config.r)}
        if config.use_dora:
            shapes["lora_magnitude_vector"] = (dim,)
        return shapes

    def add_adapter(self, name: str, config: LoraConfig, init_weights: bool = True) -> None:
        """Create A (r, num_embeddings) = 0 and B (dim, r) ~ N(0, 1) (left empty without `init_weights`)."""
        w = self.base_layer.weight
        factory = {"device": w.device, "dtype": w.dtype}
        a = torch.zeros if init_weights else torch.empty
        b = torch.randn if init_weights else torch.empty
        self.lora_embedding_A[name] = nn.Parameter(a(config.r, self.num_embeddings, **factory))
        self.lora_embedding_B[name] = nn.Parameter(b(self.embedding_dim, config.r, **factory))
        self._add_common(name, config)
        if config.use_dora and not init_weights:
            self.lora_magnitude_vector[name] = DoraMagnitude(self.embedding_dim, **factory)
        elif config.use_dora:
            self.lora_magnitude_vector[name] = DoraMagnitude.from_weights(
                w.T, self.lora_embedding_B[name] @ self.lora_embedding_A[name], config.scaling
            )

    @property
    def weight_out_dim(self) -> int:
        return 1  # DoRA's norm runs per embedding feature (columns of the (num, dim) table)

    def delta_weight(self, name: str) -> torch.Tensor:
        """(num_embeddings, dim)."""
        B, A = self.lora_embedding_B[name].float(), self.lora_embedding_A[name].float()
        return (B @ A).T * self.scaling[name]

    def _embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        return F.embedding(ids, table, padding_idx=base.padding_idx, max_norm=base.max_norm,
                           norm_type=base.norm_type, scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)

    def _embed_scale(self) -> torch.Tensor | float | None:
        scale = getattr(self.base_layer, "embed_scale", None)
        return scale.to(self.base_layer.weight.dtype) if isinstance(scale, torch.Tensor) else scale

    def _adapter_output(self, name: str, ids: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """What adapter `name` adds to `result` = base_layer(ids)."""
        A, B = self.lora_embedding_A[name], self.lora_embedding_B[name]
        out = (self._embed(ids, A.T) @ B.T) * self.scaling[name]
        embed_scale = self._embed_scale()
        if embed_scale is not None:
            out = out * embed_scale
        if name not in self.lora_magnitude_vector:
            return out
        scale = self.lora_magnitude_vector[name].scale(self.base_layer.weight.T, B @ A, self.scaling[name])
        return (scale - 1) * result + scale * out

    def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """ids (...) -> (..., dim)."""
        if not self._use_adapters():
            return self.base_layer(ids, *args, **kwargs)
        result = self.base_layer(ids, *args, **kwargs)
        if self.row_adapters is not None:
            out = result.clone()
            for name in dict.fromkeys(self.row_adapters):
                if name is None or name not in self.lora_embedding_A:
                    continue
                rows = torch.tensor([i for i, n in enumerate(self.row_adapters) if n == name], device=ids.device)
                out.index_add_(0, rows, self._adapter_output(name, ids.index_select(0, rows), result.index_select(0, rows)))
            return out
        for name in self.active_adapters:
            if name in self.lora_embedding_A:
                result = result + self._adapter_output(name, ids, result)
        return result

    def extra_repr(self) -> str:
        return f"num={self.num_embeddings}, dim={self.embedding_dim}, adapters={self.adapter_names}"
