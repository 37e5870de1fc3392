"""The ``int8`` precision's frozen projections: one int8 GEMM per group that reads one input.

Each int8 GEMM first scales its input per row and sets its outlier channels aside
(`lorakit.quant.int8mm`): passes over the whole input that q, k and v (or gate and up) would each
repeat on the same tensor. Grouped as `lorakit.train.fuse` groups fp32 projections (the family
registry's `fuse`), the input is prepared once and the group runs as one wider GEMM, forward and
input gradient alike (the members' gradients arrive concatenated, through the split of the
outputs). Unlike fp32 fusing, no concatenated fp32 weight is kept: the group holds the int8 copy
only, and the members' original `nn.Linear` modules (their file pages dropped) come back on undo.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lorakit.quant.int8mm import Int8MMLinear
from lorakit.quant.model import output_head_names, replace_module
from lorakit.runtime.memory import drop_file_pages, file_backed, file_mappings
from lorakit.train.fuse import SharedOutput, fusable_groups, group_key, set_base


class Int8Group(SharedOutput):
    """The members' weights concatenated (sum of outs, in) as one `Int8MMLinear`; outputs shared."""

    def __init__(self, bases: list[nn.Linear]) -> None:
        super().__init__([b.out_features for b in bases])
        weight = torch.cat([b.weight.detach() for b in bases])  # fp32 only while packing
        bias = None if bases[0].bias is None else torch.cat([b.bias.detach() for b in bases])
        self.linear = Int8MMLinear.from_weight(weight, bias)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Int8Slice(nn.Module):
    """Stands in for one frozen projection of an `Int8Group` (what `LoraLinear` expects of a quantized
    base: ``in_features``, ``out_features``, ``bias``, ``dequantize()``)."""

    def __init__(self, group: Int8Group, index: int, start: int, stop: int) -> None:
        super().__init__()
        self.__dict__["group"] = group  # shared, registered once on the parent (not per member)
        self.index, self.start, self.stop = index, start, stop
        self.in_features, self.out_features = group.linear.in_features, stop - start

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self.group.linear.bias
        return None if bias is None else bias[self.start:self.stop]

    def dequantize(self) -> torch.Tensor:
        """This member's rows of the int8 weight in fp32 (out, in)."""
        return self.group.linear.dequantize_rows(self.start, self.stop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(x, self.index)


def int8_projections(model: nn.Module, group: bool = True) -> Callable[[], None]:
    """Swap every frozen `nn.Linear` but the head (inside LoRA wrappers too) for int8 GEMMs: the
    registry's groups as `Int8Group`s when `group`, the rest one `Int8MMLinear` each. Returns the
    undo, which puts the original modules back (saving and merging read them).

    The fp32 weights' file pages are dropped: the int8 copies are what runs, and an undo that reads
    them again faults them back in from the file.
    """
    head = output_head_names(model)
    ranges = file_mappings()
    restore: list[Callable[[], None]] = []
    originals: list[nn.Linear] = []
    for parent, names, bases in fusable_groups(model) if group else []:
        shared = Int8Group(bases)
        key = "int8_" + group_key(names)
        parent.add_module(key, shared)
        start = 0
        for index, (name, base) in enumerate(zip(names, bases)):
            set_base(parent, name, Int8Slice(shared, index, start, start + base.out_features))
            start += base.out_features
        originals += bases
        restore.append(lambda parent=parent, names=names, bases=bases, key=key: (
            [set_base(parent, n, b) for n, b in zip(names, bases)], delattr(parent, key)))
    singles = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and not module.weight.requires_grad and name not in head]
    for name, module in singles:
        replace_module(model, name, Int8MMLinear.from_weight(module.weight, module.bias))
        restore.append(lambda name=name, module=module: replace_module(model, name, module))
    for module in originals + [m for _, m in singles]:
        if file_backed(module.weight, ranges):
            drop_file_pages(module.weight)

    def undo() -> None:
        while restore:
            restore.pop()()

    return undo
