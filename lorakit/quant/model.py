"""Swap a model's linear layers for quantized ones, in place, and back.

The output head stays dense fp32 by default: it is one matrix, it feeds the loss directly, and
QLoRA (sec. 4) quantizes only the transformer blocks' linears. Embeddings and norms are not
linear layers and are never touched.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.errors import LorakitError
from lorakit.naming import name_matches
from lorakit.quant.linear import QUANT_CLASSES, QuantLinear

METHODS = tuple(QUANT_CLASSES)


def quant_class(method: str) -> type[QuantLinear]:
    """The module class of a quantization method ('nf4' or 'int8')."""
    cls = QUANT_CLASSES.get(method)
    if cls is None:
        raise LorakitError(f"unknown quantization method {method!r}; use one of: {', '.join(METHODS)}")
    return cls


def _dense_linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def output_head_names(model: nn.Module) -> set[str]:
    """Module names of the output head (several if it is shared), empty if the model has none."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return set() if head is None else {n for n, m in model.named_modules() if m is head}


def quantizable_linears(model: nn.Module, skip: list[str] | None = None,
                        quantize_head: bool = False) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the dense linears `quantize_model` would replace.

    `skip` uses PEFT's rule (a module whose name equals an entry or ends with ``"." + entry``).
    """
    # an adapter wrapper (lorakit's or PEFT's) holds the layer it wraps as `base_layer`
    if any(isinstance(getattr(m, "base_layer", None), nn.Module) for m in model.modules()):
        raise LorakitError("quantize the model before add_adapter/load_adapter: it already has LoRA layers")
    head = set() if quantize_head else output_head_names(model)
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, _dense_linear_types()) or name in head:
            continue
        if skip and name_matches(name, skip):
            continue
        chosen.append((name, module))
    return chosen


def dense_weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight of an `nn.Linear` or a GPT-2 `Conv1D` laid out (out, in)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.T


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where module `name` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model(model: nn.Module, method: str = "nf4", skip: list[str] | None = None,
                   quantize_head: bool = False) -> nn.Module:
    """Replace every linear layer of `model` (not the output head) by a frozen quantized one.

    One layer is quantized and its dense weight released before the next, so the extra memory
    is one layer's temporaries. Returns `model` (changed in place).
    """
    cls = quant_class(method)
    for name, module in quantizable_linears(model, skip, quantize_head):
        replace_module(model, name, cls.from_weight(dense_weight_out_in(module), module.bias))
        module.weight = None  # let the dense weight go now, not when `model` is collected
    return model


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantLinear]]:
    """``(name, layer)`` of every quantized linear in `model` (inside LoRA wrappers too)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every quantized linear by a dense `nn.Linear` in `dtype` (in place; returns `model`)."""
    for name, layer in quantized_layers(model):
        replace_module(model, name, layer.to_dense(dtype))
    return model
