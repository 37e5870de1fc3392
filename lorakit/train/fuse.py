"""Frozen projections that read the same input run as one GEMM: q/k/v, and gate/up.

One wide GEMM keeps a CPU's vector units busier than three narrow ones (bench/RESULTS.md), in
the backward pass too. Which groups exist is the family registry's `fuse` (`lorakit.families`).
Each projection's frozen base becomes a `FusedSlice` of one shared `FusedBase`: the first
member called with an input computes all outputs, the others take their slice of it.
LoRA wrappers stay where they are, so adapters, names and saved files do not change.
`unfuse` restores ordinary `nn.Linear` modules (done before saving or merging).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters.layers import LoraLayer
from lorakit.families import decoder_layers, family_for
from lorakit.runtime.memory import drop_file_pages, file_backed, file_mappings


class SharedOutput(nn.Module):
    """One projection of an input for a group of members; caches its last output for the group.
    Subclasses say how the group's (..., sum of outs) output is computed (`project`)."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self._key: tuple | None = None
        self._parts: tuple[torch.Tensor, ...] | None = None
        self._reads = 0

    def project(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """x (..., in) -> member `index`'s (..., out_i); the GEMM runs once per input tensor.

        The outputs are handed out by one `split`, whose backward concatenates the members'
        gradients: slicing each member out instead made autograd zero-fill a full-width
        gradient per member and add them up (a profiled share of a training step).
        """
        key = (id(x), x._version, torch.is_grad_enabled())
        if self._key != key or self._parts is None:
            self._key, self._parts, self._reads = key, self.project(x).split(self.sizes, dim=-1), 0
        part = self._parts[index]
        self._reads += 1
        if self._reads >= len(self.sizes):  # every member has its part: let the buffer go
            self._key, self._parts = None, None
        return part


class FusedBase(SharedOutput):
    """Concatenated frozen weight (sum of outs, in) and bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int]) -> None:
        super().__init__(sizes)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class FusedSlice(nn.Module):
    """Stands in for one frozen projection: its rows of the shared GEMM."""

    def __init__(self, fused: FusedBase, index: int, start: int, stop: int) -> None:
        super().__init__()
        self.__dict__["fused"] = fused  # shared, registered once on the parent (not per member)
        self.index, self.start, self.stop = index, start, stop
        self.in_features, self.out_features = fused.weight.shape[1], stop - start

    @property
    def weight(self) -> torch.Tensor:
        return self.fused.weight[self.start:self.stop]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.fused.bias is None else self.fused.bias[self.start:self.stop]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.output(x, self.index)


def base_of(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, LoraLayer) else module


def set_base(parent: nn.Module, name: str, new_base: nn.Module) -> None:
    module = getattr(parent, name)
    if isinstance(module, LoraLayer):
        module.base_layer = new_base
    else:
        setattr(parent, name, new_base)


def fusable_groups(model: nn.Module) -> list[tuple[nn.Module, list[str], list[nn.Linear]]]:
    """(parent, member names, their frozen bases) of each group the family registry lists (q/k/v,
    gate/up) whose members are all plain frozen `nn.Linear`s of one input size, dtype and bias kind."""
    family = family_for(model)
    found = []
    for layer in decoder_layers(model) if family.fuse else []:
        for parent_name, names in family.fuse:
            parent = getattr(layer, parent_name, None)
            bases = [base_of(getattr(parent, n, None)) for n in names] if parent is not None else []
            if len(bases) != len(names) or not all(type(b) is nn.Linear for b in bases):
                continue
            if any(p.requires_grad for b in bases for p in b.parameters()):
                continue  # trained weights (full fine-tuning) stay separate
            if len({(b.in_features, b.weight.dtype, b.bias is None) for b in bases}) == 1:
                found.append((parent, list(names), bases))
    return found


def group_key(names: list[str]) -> str:
    """The part of a group's module name that says which members it holds ("q_k_v", "gate_up")."""
    return "_".join(n.split("_")[0] for n in names)


def fuse_projections(model: nn.Module) -> int:
    """Fuse every group `fusable_groups` finds; returns groups fused."""
    groups = fusable_groups(model)
    ranges = file_mappings()
    for parent, names, bases in groups:
        weight = torch.cat([b.weight.detach() for b in bases])
        bias = torch.cat([b.bias.detach() for b in bases]) if bases[0].bias is not None else None
        for b in bases:  # the fused copy holds their values; read from a weights file, their pages would
            if file_backed(b.weight, ranges):  # stay resident beside it while the file stays mapped
                drop_file_pages(b.weight)
        shared = FusedBase(weight, bias, [b.out_features for b in bases])
        parent.add_module("fused_" + group_key(names), shared)
        start = 0
        for index, (name, base) in enumerate(zip(names, bases)):
            set_base(parent, name, FusedSlice(shared, index, start, start + base.out_features))
            start += base.out_features
    return len(groups)


def unfuse_projections(model: nn.Module) -> None:
    """Give every fused projection back its own `nn.Linear` (contiguous weights, savable)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            base = base_of(child)
            if isinstance(base, FusedSlice):
                linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                                   device=base.weight.device, dtype=base.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(base.weight)
                    if base.bias is not None:
                        linear.bias.copy_(base.bias)
                linear.requires_grad_(False)
                set_base(parent, child_name, linear)
        for child_name, child in list(parent.named_children()):
            if isinstance(child, FusedBase):
                delattr(parent, child_name)
