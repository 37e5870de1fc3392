"""Leaner activations for gated-MLP decoders: store what backward needs, recompute the rest.

Autograd keeps, per layer of `down(act(gate(x)) * up(x))`, gate(x) (for act's backward),
act(gate(x)) and up(x) (for the product's), and the product h (for down_proj's LoRA A
factor): four (tokens x intermediate) tensors, the largest share of a LoRA step's saved
activations (profiled with saved-tensor hooks; bench/RESULTS.md). Each norm output that feeds
linears is kept too (by the LoRA A factors of the projections that read it), though its input
is kept anyway.

`LeanMLP` saves only gate(x) and up(x) and registers h for recomputation; a forward hook on
each such norm registers its output. Under `recompute.recomputing()` (the trainer's loss runs
inside it) those tensors are recomputed in backward, bitwise equal (tests/train/test_lean.py).
Which norms and which activation is the family registry's `lean` (`lorakit.families`): SwiGLU
for Llama, Mistral and Qwen, tanh-GELU (GeGLU) for Gemma. Not with gradient checkpointing, which
discards these anyway.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers.activations as hf_act
from torch import nn

from lorakit.families import decoder_layers, family_for
from lorakit.train import recompute


@dataclass(frozen=True)
class Gate:
    """A gated MLP's activation: its forward, its backward (the op autograd's own node calls, so
    gradients are bitwise equal), and a test that a model's `act_fn` computes exactly it."""

    forward: object  # g -> act(g)
    backward: object  # (grad, g) -> grad of act at g
    matches: object  # act_fn module -> bool


def _is_tanh_gelu(act: nn.Module) -> bool:
    fn = getattr(act, "act", None)  # GELUTanh holds functools.partial(F.gelu, approximate="tanh")
    if isinstance(fn, functools.partial):
        return fn.func is F.gelu and fn.keywords == {"approximate": "tanh"}
    legacy = getattr(hf_act, "PytorchGELUTanh", None)  # older transformers: gelu(x, approximate="tanh")
    return legacy is not None and type(act) is legacy


GATES = {
    "silu": Gate(F.silu, torch.ops.aten.silu_backward,
                 lambda act: isinstance(act, (hf_act.SiLUActivation, nn.SiLU))),
    "gelu_tanh": Gate(functools.partial(F.gelu, approximate="tanh"),
                      functools.partial(torch.ops.aten.gelu_backward, approximate="tanh"), _is_tanh_gelu),
}


def gated(gate: Gate, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """act(g) * u, elementwise; g, u (..., intermediate)."""
    return gate.forward(g) * u


class GatedProduct(torch.autograd.Function):
    """h = act(g) * u, saving only g and u (act(g) is recomputed in backward)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor, gate: Gate) -> torch.Tensor:
        ctx.save_for_backward(g, u)
        ctx.gate = gate
        return gated(gate, g, u)

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        g, u = ctx.saved_tensors
        return ctx.gate.backward(grad_h * u, g), grad_h * ctx.gate.forward(g), None


class LeanMLP(nn.Module):
    """Stands in for a gated MLP, down(act(gate(x)) * up(x)); same children, same names."""

    def __init__(self, mlp: nn.Module, gate: Gate) -> None:
        super().__init__()
        for name, child in mlp.named_children():  # gate/up/down_proj, act_fn, a fused gate/up GEMM
            self.add_module(name, child)
        self.__dict__["original"] = mlp  # out of the module tree; `restore_layers` puts it back
        self.__dict__["gate"] = gate
        self.__dict__["product"] = functools.partial(gated, gate)  # the recipe registered each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., hidden) -> (..., hidden)."""
        g, u = self.gate_proj(x), self.up_proj(x)
        if not torch.is_grad_enabled():
            return self.down_proj(self.product(g, u))
        h = GatedProduct.apply(g, u, self.gate)
        recompute.register(h, self.product, g, u)
        return self.down_proj(h)


def _register_norm_output(norm: nn.Module, args: tuple, out: torch.Tensor) -> None:
    """Forward hook: a norm's output is recomputed from its input (which its backward keeps)."""
    if torch.is_grad_enabled() and isinstance(out, torch.Tensor):
        recompute.register(out, norm, args[0])


def _lean_mlp_eligible(mlp: nn.Module | None, gate: Gate) -> bool:
    return (mlp is not None and isinstance(getattr(mlp, "act_fn", None), nn.Module) and gate.matches(mlp.act_fn)
            and all(isinstance(getattr(mlp, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj")))


def lean_layers(model: nn.Module) -> int:
    """Make every decoder layer lean where the family registry allows it; returns how many changed."""
    family = family_for(model)
    if family.lean is None or getattr(model, "_lean_hooks", None):
        return 0
    gate = GATES[family.lean.activation]
    hooks, changed = [], 0
    for layer in decoder_layers(model):
        if not _lean_mlp_eligible(getattr(layer, "mlp", None), gate):
            continue
        layer.mlp = LeanMLP(layer.mlp, gate)
        for name in family.lean.norms:
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
    for layer in decoder_layers(model):
        lean = getattr(layer, "mlp", None)
        if isinstance(lean, LeanMLP):
            original = lean.original
            for name in [n for n, _ in original.named_children()]:
                delattr(original, name)  # children may have been swapped (fused, unfused) meanwhile
            for name, child in lean.named_children():
                original.add_module(name, child)
            layer.mlp = original
