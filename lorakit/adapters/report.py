"""Trainable-parameter report: what an adapter adds, per module type, in count, % and MB."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from lorakit.adapters.model import adapter_layers, adapters, saved_module_wrappers


@dataclass
class ParamReport:
    """Counts for one model: per module type (``q_proj``, ``classifier``, ...) and totals."""

    per_module: dict[str, int] = field(default_factory=dict)
    trainable: int = 0
    total: int = 0
    adapter_bytes: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def format(self) -> str:
        """A table for the terminal."""
        width = max([len(k) for k in self.per_module] + [len("module type")])
        lines = [f"{'module type':<{width}}  {'params':>12}  {'% of model':>10}"]
        for key, n in sorted(self.per_module.items(), key=lambda kv: -kv[1]):
            lines.append(f"{key:<{width}}  {n:>12,}  {100 * n / max(self.total, 1):>9.4f}%")
        lines.append(f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                     f"trainable%: {self.percent:.4f} || adapter size: {self.adapter_bytes / 2**20:.2f} MB")
        return "\n".join(lines)


def trainable_report(model: nn.Module, name: str | None = None) -> ParamReport:
    """Count adapter parameters (of adapter `name`, or every adapter) against the base model.

    `total` counts every distinct parameter once (tied embeddings once), adapters included,
    as PEFT's `print_trainable_parameters` does.
    """
    names = list(adapters(model)) if name is None else [name]
    report = ParamReport()
    per_module: dict[str, int] = defaultdict(int)
    for module_name, wrapper in [*adapter_layers(model), *saved_module_wrappers(model)]:
        kind = module_name.rsplit(".", 1)[-1]
        for adapter in names:
            for p in wrapper.adapter_parameters(adapter).values():
                per_module[kind] += p.numel()
                report.adapter_bytes += p.numel() * p.element_size()
    report.per_module = dict(per_module)
    report.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report.total = sum(p.numel() for p in model.parameters())
    return report
