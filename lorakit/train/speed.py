"""Apply a resolved speed plan (`lorakit.plan.speed`) to a prepared model, and undo it.

The plan says what runs; this module only carries it out, in an order that matters: lean layers
wrap the MLPs before fusing swaps their projections, frozen weights are recast to bf16 after
fusing and before they leave the file mapping (so no fp32 copy is made only to be dropped), and
layers are compiled last. The returned undo runs the reversible steps in reverse (compiled
layers, fused projections, lean layers, attention), so saving and merging see ordinary modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lorakit.errors import LorakitError
from lorakit.families import decoder_layers
from lorakit.plan.speed import SpeedPlan
from lorakit.runtime.memory import drop_file_pages, file_backed, file_mappings, own_weights, steady_malloc
from lorakit.train.attention import use_attention
from lorakit.train.fuse import FusedBase, fuse_projections, unfuse_projections
from lorakit.train.int8_groups import int8_projections
from lorakit.train.lean import lean_layers, restore_layers


def store_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Recast the frozen fp32 weights and biases of plain and fused linear layers to `dtype`; returns how many.

    The input embedding and the output head stay as they are (tied in SmolLM2). Pages of a file
    mapping (transformers maps safetensors) are dropped, or they would stay resident.
    """
    keep = {id(getattr(m, "weight", None)) for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    ranges, stored = file_mappings(), 0
    for module in model.modules():
        if type(module) is not nn.Linear and not isinstance(module, FusedBase):
            continue
        for tensor in (module.weight, module.bias):
            if tensor is None or tensor.requires_grad or tensor.dtype != torch.float32 or id(tensor) in keep:
                continue
            old = tensor.data
            tensor.data = old.to(dtype)
            if file_backed(old, ranges):
                drop_file_pages(old)
            stored += 1
    return stored


def _uncompile(layers: list[nn.Module]) -> None:
    for layer in layers:
        layer._compiled_call_impl = None  # what `nn.Module.compile` set


def apply_speed_plan(model: nn.Module, plan: SpeedPlan) -> Callable[[], None]:
    """Do to `model` (adapters attached, trainable parameters set) what `plan` says; returns its undo."""
    undo: list[Callable[[], None]] = []
    layers = decoder_layers(model) if plan.compile else []
    if plan.compile and not layers:
        raise LorakitError(f"--compile: {type(model).__name__} names no decoder layer class in "
                           "_no_split_modules; run without --compile")
    if plan.attention:
        previous = model.config._attn_implementation
        use_attention(model, plan.attention)
        undo.append(lambda: model.set_attn_implementation(previous))
    if plan.lean:
        lean_layers(model)
        undo.append(lambda: restore_layers(model))
    if plan.fuse and plan.precision != "int8":  # int8 groups its own (`lorakit.train.int8_groups`)
        fuse_projections(model)
        undo.append(lambda: unfuse_projections(model))
    if plan.frozen_bf16:
        store_frozen(model, torch.bfloat16)
    if plan.precision == "int8":
        undo.append(int8_projections(model, group=plan.fuse))
    for layer in layers:
        layer.compile()
    if layers:
        undo.append(lambda: _uncompile(layers))
    if plan.own_weights:
        own_weights(model)
    if plan.device == "cpu" and not plan.release_memory:
        steady_malloc()  # each step reuses the last one's pages (`lorakit.runtime.memory`)

    def undo_all() -> None:
        while undo:
            undo.pop()()

    return undo_all
