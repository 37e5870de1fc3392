"""LoRA layers: wrap a frozen `base_layer` and add ``scaling * B(A(dropout(x)))``.

Parameter names and shapes are PEFT's, so saving is filtering keys:
``lora_A.<name>.weight`` (r, in), ``lora_B.<name>.weight`` (out, r),
``lora_magnitude_vector.<name>.weight`` (out,) for DoRA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters.config import LoraConfig
from lorakit.adapters.dora import DoraMagnitude


class LoraLayer(nn.Module):
    """Common state of every LoRA wrapper: adapters by name, which are active, which are merged."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.r: dict[str, int] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        for p in base_layer.parameters():
            p.requires_grad_(False)

    # -- adapters -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        """Names of the adapters this layer holds."""
        return list(self.r)

    def _add_common(self, name: str, config: LoraConfig) -> None:
        self.r[name] = config.r
        self.scaling[name] = config.scaling
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if not self.active_adapters:
            self.active_adapters = [name]

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` (unmerging first if it is merged)."""
        if name in self.merged_adapters:
            self.unmerge()
        for container in self._adapter_containers():
            if name in container:
                del container[name]
        self.r.pop(name, None)
        self.scaling.pop(name, None)
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """``{local_key: parameter}`` of one adapter, keys as PEFT saves them (no adapter name)."""
        out: dict[str, nn.Parameter] = {}
        for attr in self._adapter_attrs():
            container = getattr(self, attr)
            if name not in container:
                continue
            entry = container[name]
            if isinstance(entry, nn.Parameter):
                out[attr] = entry
            else:
                out[f"{attr}.weight"] = entry.weight
        if name in self.lora_magnitude_vector:
            out["lora_magnitude_vector"] = self.lora_magnitude_vector[name].weight
        return out

    def _adapter_containers(self) -> list[nn.Module]:
        return [getattr(self, a) for a in self._adapter_attrs()] + [
            self.lora_dropout,
            self.lora_magnitude_vector,
        ]

    def _adapter_attrs(self) -> tuple[str, ...]:
        raise NotImplementedError

    # -- merge -----------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """``scaling * B @ A`` laid out like ``base_layer.weight``."""
        raise NotImplementedError

    def merge(self, names: list[str] | None = None) -> None:
        """Fold adapters into ``base_layer.weight`` (no-op for ones already merged)."""
        weight = self.base_layer.weight
        for name in names if names is not None else self.active_adapters:
            if name in self.merged_adapters or name not in self.r:
                continue
            with torch.no_grad():
                delta = self.delta_weight(name)
                if name in self.lora_magnitude_vector:
                    dora = self.lora_magnitude_vector[name]
                    factor = dora.merge_factor(weight.float(), delta, self.weight_out_dim)
                    weight.data = (factor * (weight.float() + delta)).to(weight.dtype)
                else:
                    weight.data += delta.to(weight.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo `merge`, last merged first."""
        weight = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with torch.no_grad():
                delta = self.delta_weight(name)
                if name in self.lora_magnitude_vector:
                    factor = self.lora_magnitude_vector[name].pop_merge_factor()
                    weight.data = (weight.float() / factor - delta).to(weight.dtype)
                else:
                    weight.data -= delta.to(weight.dtype)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def weight_out_dim(self) -> int:
        """Axis of ``base_layer.weight`` that indexes output features (DoRA's norm is per output)."""
        return 0

    def _use_adapters(self) -> bool:
        if self.disabled:
            if self.merged:
                self.unmerge()
            return False
        return not self.merged


class LoraLinear(LoraLayer):
    """LoRA on `nn.Linear` or transformers `Conv1D` (GPT-2; weight stored (in, out), ``fan_in_fan_out``)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        from transformers.pytorch_utils import Conv1D

        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        w = base_layer.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    @classmethod
    def from_base(cls, base_layer: nn.Module, name: str, config: LoraConfig) -> "LoraLinear":
        """Wrap `base_layer` and add adapter `name`."""
        layer = cls(base_layer)
        layer.add_adapter(name, config)
        return layer

    def _adapter_attrs(self) -> tuple[str, ...]:
        return ("lora_A", "lora_B")

    @staticmethod
    def param_shapes(base_layer: nn.Module, config: LoraConfig) -> dict[str, tuple[int, ...]]:
        """Saved key -> shape of one adapter on `base_layer` (used to check a file before loading)."""
        from transformers.pytorch_utils import Conv1D

        w = base_layer.weight
        in_f, out_f = (w.shape[0], w.shape[1]) if isinstance(base_layer, Conv1D) else (w.shape[1], w.shape[0])
        shapes = {"lora_A.weight": (config.r, in_f), "lora_B.weight": (out_f, config.r)}
        if config.use_dora:
            shapes["lora_magnitude_vector"] = (out_f,)
        return shapes

    def add_adapter(self, name: str, config: LoraConfig) -> None:
        """Create A (r, in) and B (out, r); B = 0 so the output starts equal to the base's."""
        w = self.base_layer.weight
        factory = {"device": w.device, "dtype": torch.float32 if not w.is_floating_point() else w.dtype}
        self.lora_A[name] = nn.Linear(self.in_features, config.r, bias=False, **factory)
        self.lora_B[name] = nn.Linear(config.r, self.out_features, bias=False, **factory)
        if config.init == "gaussian":
            nn.init.normal_(self.lora_A[name].weight, std=1 / config.r)
        else:
            # nn.Linear's own default init, as in the LoRA reference code and PEFT
            nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        self._add_common(name, config)
        if config.use_dora:
            self.lora_magnitude_vector[name] = DoraMagnitude.from_weights(
                self._base_weight_out_in(), self.lora_B[name].weight @ self.lora_A[name].weight, config.scaling
            )

    def _base_weight_out_in(self) -> torch.Tensor:
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    @property
    def weight_out_dim(self) -> int:
        return 1 if self.fan_in_fan_out else 0

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = (self.lora_B[name].weight.float() @ self.lora_A[name].weight.float()) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        if not self._use_adapters():
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        out_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            A, B = self.lora_A[name], self.lora_B[name]
            scaling = self.scaling[name]
            dropout = self.lora_dropout[name]
            xa = x.to(A.weight.dtype)
            if name not in self.lora_magnitude_vector:
                result = result + B(A(dropout(xa))) * scaling
                continue
            # DoRA: (m / ||W + s BA||) (W x + s B A x) - W x, the norm detached (DoRA paper, sec. 4.3)
            dora = self.lora_magnitude_vector[name]
            base = self._base_weight_out_in().to(xa.dtype)
            if isinstance(dropout, nn.Identity) or not self.training:
                bias = self.base_layer.bias
                base_out = result if bias is None else result - bias
            else:
                xa = dropout(xa)
                base_out = F.linear(xa, base)
            scale = dora.scale(base, B.weight @ A.weight, scaling)
            result = result + (scale - 1) * base_out + scale * B(A(xa)) * scaling
        return result.to(out_dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"
