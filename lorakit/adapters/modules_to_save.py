"""Modules trained in full next to an adapter (e.g. a classifier head), saved with it.

Like PEFT, the original module is kept and each adapter gets its own trainable copy;
the active adapter's copy runs, the original runs when adapters are disabled.
"""

from __future__ import annotations

import copy

from torch import nn


class ModulesToSave(nn.Module):
    """Wraps `original_module`; ``modules_to_save[name]`` is adapter `name`'s trainable copy."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        original_module.requires_grad_(False)

    @classmethod
    def from_base(cls, original_module: nn.Module, name: str) -> "ModulesToSave":
        """Wrap `original_module` and add a trainable copy for adapter `name`."""
        wrapper = cls(original_module)
        wrapper.add_adapter(name)
        return wrapper

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def add_adapter(self, name: str) -> None:
        """Give adapter `name` its own trainable copy of the original module."""
        module = copy.deepcopy(self.original_module)
        module.requires_grad_(True)
        self.modules_to_save[name] = module
        if self.active_adapter is None:
            self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        """Drop adapter `name`'s copy."""
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.modules_to_save), None)

    def set_adapter(self, names: list[str]) -> None:
        """Use the copy of the first of `names` this wrapper holds (the original if none)."""
        self.active_adapter = next((n for n in names if n in self.modules_to_save), None)

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """``{param_name: parameter}`` of adapter `name`'s copy, named as in the original module."""
        return dict(self.modules_to_save[name].named_parameters()) if name in self.modules_to_save else {}

    def current(self) -> nn.Module:
        """The module that runs now."""
        if self.disabled or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args, **kwargs):
        return self.current()(*args, **kwargs)

    def __getattr__(self, attr: str):
        # Model code sometimes reads attributes of the head (e.g. `.weight`, `.out_features`).
        try:
            return super().__getattr__(attr)
        except AttributeError:
            return getattr(self.current(), attr)
