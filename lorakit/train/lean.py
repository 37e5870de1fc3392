"""Leaner activations for Llama-style decoders: store what backward needs, recompute the rest.

Autograd keeps, per layer of `down(silu(gate(x)) * up(x))`, gate(x) (for silu's backward),
silu(gate(x)) and up(x) (for the product's), and the product h (for down_proj's LoRA A
factor): four (tokens x intermediate) tensors, 720 MB of SmolLM2-135M's ~1.2 GB of saved
activations at 4 x 256 tokens (profiled with saved-tensor hooks). Each RMSNorm output is kept
too (by the LoRA A factors of the projections that read it), though its input is kept anyway.

`LeanMLP` saves only gate(x) and up(x) and registers h for recomputation; a forward hook on
each norm registers its output. Under `recompute.recomputing()` (the trainer's loss runs inside
it) the saved activations drop from 1185 to 692 MB at that shape (fused projections) for a few
% more elementwise work in backward, bitwise equal (tests/train/test_lean.py). Applied where the MLP is the Llama pattern with SiLU (Llama,
Mistral, Qwen2, Qwen3) and without gradient checkpointing, which discards these anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import SiLUActivation

from lorakit.train import recompute

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
NORMS = ("input_layernorm", "post_attention_layernorm")


def swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u, elementwise; g, u (..., intermediate)."""
    return F.silu(g) * u


class SwiGLU(torch.autograd.Function):
    """h = silu(g) * u, saving only g and u (silu(g) is recomputed in backward)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, u)
        return swiglu(g, u)

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, u = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad_h * u, g), grad_h * F.silu(g)


class LeanMLP(nn.Module):
    """Stands in for a Llama-style MLP, down(silu(gate(x)) * up(x)); same children, same names."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        for name, child in mlp.named_children():  # gate/up/down_proj, act_fn, a fused gate/up GEMM
            self.add_module(name, child)
        self.__dict__["original"] = mlp  # out of the module tree; `restore_layers` puts it back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., hidden) -> (..., hidden)."""
        g, u = self.gate_proj(x), self.up_proj(x)
        if not torch.is_grad_enabled():
            return self.down_proj(swiglu(g, u))
        h = SwiGLU.apply(g, u)
        recompute.register(h, swiglu, g, u)
        return self.down_proj(h)


def _register_norm_output(norm: nn.Module, args: tuple, out: torch.Tensor) -> None:
    """Forward hook: a norm's output is recomputed from its input (which its backward keeps)."""
    if torch.is_grad_enabled() and isinstance(out, torch.Tensor):
        recompute.register(out, norm, args[0])


def _lean_mlp_eligible(mlp: nn.Module | None) -> bool:
    return (mlp is not None and isinstance(getattr(mlp, "act_fn", None), (SiLUActivation, nn.SiLU))
            and all(isinstance(getattr(mlp, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj")))


def lean_layers(model: nn.Module) -> int:
    """Make every decoder layer of a supported family lean; returns how many layers changed."""
    if getattr(model.config, "model_type", "") not in FAMILIES or getattr(model, "_lean_hooks", None):
        return 0
    hooks, changed = [], 0
    for layer in getattr(model.base_model, "layers", []):
        if not _lean_mlp_eligible(getattr(layer, "mlp", None)):
            continue
        layer.mlp = LeanMLP(layer.mlp)
        for name in NORMS:
            norm = getattr(layer, name, None)
            if isinstance(norm, nn.Module):
                hooks.append(norm.register_forward_hook(_register_norm_output))
        changed += 1
    model.__dict__["_lean_hooks"] = hooks
    return changed


def restore_layers(model: nn.Module) -> None:
    """Undo `lean_layers`: original MLP modules (with their current children) and no hooks."""
    for handle in model.__dict__.pop("_lean_hooks", []):
        handle.remove()
    for layer in getattr(model.base_model, "layers", []):
        lean = getattr(layer, "mlp", None)
        if isinstance(lean, LeanMLP):
            original = lean.original
            for name in [n for n, _ in original.named_children()]:
                delattr(original, name)  # children may have been swapped (fused, unfused) meanwhile
            for name, child in lean.named_children():
                original.add_module(name, child)
            layer.mlp = original
