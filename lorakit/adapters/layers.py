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
from lorakit.adapters.dropout import LoraDropout, dropped_down


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
        # per-batch-row adapter names for mixed-adapter batches (serving); None = use active_adapters
        self.row_adapters: list[str | None] | None = None
        for p in base_layer.parameters():
            p.requires_grad_(False)

    # -- adapters -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        """Names of the adapters this layer holds."""
        return list(self.r)

    def _add_common(self, name: str, config: LoraConfig, dropout: nn.Module | None = None) -> None:
        self.r[name] = config.r
        self.scaling[name] = config.scaling
        self.lora_dropout[name] = dropout if dropout is not None else make_dropout(config)
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
        """Fold adapters into ``base_layer.weight`` (no-op for ones already merged).

        A quantized base is first swapped for its dequantized fp32 `nn.Linear` (``to_dense``) and
        the delta added there; `unmerge` puts the untouched quantized module back.
        """
        to_dense = getattr(self.base_layer, "to_dense", None)
        if callable(to_dense):
            self.__dict__["_quantized_base"] = self.base_layer  # not a submodule: no double state_dict
            self.base_layer = to_dense(torch.float32)
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
        quantized = self.__dict__.pop("_quantized_base", None)
        if quantized is not None:  # the quantized original was never changed: restore it exactly
            for name in self.merged_adapters:
                if name in self.lora_magnitude_vector:
                    self.lora_magnitude_vector[name].pop_merge_factor()
            self.merged_adapters.clear()
            self.base_layer = quantized
            return
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


def make_dropout(config: LoraConfig) -> nn.Module:
    """The LoRA-path dropout of `config` (Identity when it is 0)."""
    return LoraDropout(config.dropout) if config.dropout > 0 else nn.Identity()


def linear_holding(weight: torch.Tensor, requires_grad: bool = True) -> nn.Linear:
    """An `nn.Linear` (no bias) whose weight is `weight` itself: no allocation, no init kernel, no
    constructor work, since hot-loading an adapter while serving must take milliseconds.

    Fields are set in the module's dicts directly: `Module.__setattr__` checks every assignment
    against parameters, buffers and submodules, a cost paid for every factor of every adapter
    hot-loaded (bench/RESULTS_serve.md has the hot-load timings).
    """
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.__dict__["out_features"], layer.__dict__["in_features"] = weight.shape
    layer._parameters["weight"] = nn.Parameter(weight, requires_grad=requires_grad)
    layer._parameters["bias"] = None  # as nn.Linear(bias=False) registers it
    return layer


def linear_dims(base_layer: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a Linear, a GPT-2 Conv1D or a quantized linear."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(base_layer, Conv1D):
        return base_layer.weight.shape[0], base_layer.weight.shape[1], True
    return base_layer.in_features, base_layer.out_features, False


def dense_weight(base_layer: nn.Module) -> torch.Tensor:
    """The base weight as a dense tensor: quantized layers provide ``dequantize()`` (out, in)."""
    dequantize = getattr(base_layer, "dequantize", None)
    return dequantize() if callable(dequantize) else base_layer.weight


class LoraLinear(LoraLayer):
    """LoRA on `nn.Linear`, transformers `Conv1D` (GPT-2; weight stored (in, out), ``fan_in_fan_out``),
    or a quantized linear that exposes ``in_features``, ``out_features`` and ``dequantize()``."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features, self.fan_in_fan_out = linear_dims(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    @classmethod
    def from_base(cls, base_layer: nn.Module, name: str, config: LoraConfig, init_weights: bool = True) -> "LoraLinear":
        """Wrap `base_layer` and add adapter `name`."""
        layer = cls(base_layer)
        layer.add_adapter(name, config, init_weights)
        return layer

    def _adapter_attrs(self) -> tuple[str, ...]:
        return ("lora_A", "lora_B")

    @staticmethod
    def param_shapes(base_layer: nn.Module, config: LoraConfig) -> dict[str, tuple[int, ...]]:
        """Saved key -> shape of one adapter on `base_layer` (used to check a file before loading)."""
        in_f, out_f, _ = linear_dims(base_layer)
        shapes = {"lora_A.weight": (config.r, in_f), "lora_B.weight": (out_f, config.r)}
        if config.use_dora:
            shapes["lora_magnitude_vector"] = (out_f,)
        return shapes

    def factor_options(self) -> dict:
        """Device and dtype of this layer's adapter factors: fp32 even on a low-precision or
        quantized base (fp64 on an fp64 one), on the base's device."""
        w = dense_weight(self.base_layer)
        return {"device": w.device, "dtype": w.dtype if w.dtype == torch.float64 else torch.float32}

    def adopt_adapter(self, name: str, config: LoraConfig, parts: dict[str, nn.Module]) -> None:
        """Insert adapter `name` from ready modules ("lora_A", "lora_B", "lora_dropout" and, for
        DoRA, "lora_magnitude_vector", as `lorakit.adapters.io.prepare_adapter` builds them)."""
        self.lora_A[name], self.lora_B[name] = parts["lora_A"], parts["lora_B"]
        if "lora_magnitude_vector" in parts:
            self.lora_magnitude_vector[name] = parts["lora_magnitude_vector"]
        self._add_common(name, config, parts["lora_dropout"])

    def add_adapter(self, name: str, config: LoraConfig, init_weights: bool = True) -> None:
        """Create A (r, in) and B (out, r); B = 0 so the output starts equal to the base's.

        ``init_weights=False`` leaves them uninitialised, for a loader that overwrites them at once.
        """
        factory = self.factor_options()
        if init_weights:
            self.lora_A[name] = nn.Linear(self.in_features, config.r, bias=False, **factory)
            self.lora_B[name] = nn.Linear(config.r, self.out_features, bias=False, **factory)
        else:
            self.lora_A[name] = linear_holding(torch.empty(config.r, self.in_features, **factory))
            self.lora_B[name] = linear_holding(torch.empty(self.out_features, config.r, **factory))
        self._add_common(name, config)
        if not init_weights:
            if config.use_dora:
                self.lora_magnitude_vector[name] = DoraMagnitude(self.out_features, **factory)
            return
        if config.init == "gaussian":
            nn.init.normal_(self.lora_A[name].weight, std=1 / config.r)
        else:
            # nn.Linear's own default init, as in the LoRA reference code and PEFT
            nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        if config.use_dora:
            self.lora_magnitude_vector[name] = DoraMagnitude.from_weights(
                self._base_weight_out_in(), self.lora_B[name].weight @ self.lora_A[name].weight, config.scaling
            )

    def _base_weight_out_in(self) -> torch.Tensor:
        w = dense_weight(self.base_layer)
        return w.T if self.fan_in_fan_out else w

    @property
    def weight_out_dim(self) -> int:
        return 1 if self.fan_in_fan_out else 0

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = (self.lora_B[name].weight.float() @ self.lora_A[name].weight.float()) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def _adapter_output(self, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """What adapter `name` adds to `result` = base_layer(x); x (..., in), result (..., out)."""
        A, B = self.lora_A[name], self.lora_B[name]
        scaling = self.scaling[name]
        dropout = self.lora_dropout[name]
        x = x.to(A.weight.dtype)
        if name not in self.lora_magnitude_vector:
            # scale the (.., r) activations, not the (.., out) result: r << out
            return B(A(dropout(x)) * scaling)
        # DoRA: (m / ||W + s BA||) (W x + s B A x) - W x, the norm detached (DoRA paper, sec. 4.3)
        base = self._base_weight_out_in().to(x.dtype)
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = getattr(self.base_layer, "bias", None)
            base_out = result if bias is None else result - bias
        else:
            x = dropout(x)
            base_out = F.linear(x, base)
        scale = self.lora_magnitude_vector[name].scale(base, B.weight @ A.weight, scaling)
        return (scale - 1) * base_out + scale * B(A(x)) * scaling

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        if not self._use_adapters():
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        out_dtype = result.dtype
        if self.row_adapters is not None:
            return self._mixed_forward(x, result).to(out_dtype)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            if name in self.lora_magnitude_vector:
                result = result + self._adapter_output(name, x, result)
                continue
            # plain LoRA: result + (s * A(drop(x))) @ B^T as one addmm (no (.., out) temporaries)
            A, B = self.lora_A[name], self.lora_B[name]
            h = dropped_down(self.lora_dropout[name], x.to(A.weight.dtype), A.weight, self.scaling[name])
            # a bf16 base's output joins the fp32 factors' addmm in fp32 (cast back below); no copy in fp32
            result = torch.addmm(result.reshape(-1, result.shape[-1]).to(h.dtype), h.reshape(-1, h.shape[-1]),
                                 B.weight.T).view(result.shape)
        return result.to(out_dtype)

    def _mixed_forward(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """Each batch row takes its own adapter (``row_adapters[i]``; None = base only)."""
        from lorakit.adapters.rows import fast_path_ok, mixed_linear_delta

        present = tuple(sorted({n for n in self.row_adapters if n is not None and n in self.lora_A}))
        if fast_path_ok(self, present):  # all adapters of the batch in two matmuls (see rows.py)
            delta = mixed_linear_delta(self, x, self.row_adapters)
            return result if delta is None else result + delta.to(result.dtype)
        out = result.clone()
        for name in dict.fromkeys(self.row_adapters):
            if name is None or name not in self.lora_A:
                continue
            rows = torch.tensor([i for i, n in enumerate(self.row_adapters) if n == name], device=x.device)
            delta = self._adapter_output(name, x.index_select(0, rows), result.index_select(0, rows))
            out.index_add_(0, rows, delta.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"
