"""Which modules an adapter wraps: the family registry's presets and PEFT's matching rules.

Matching follows PEFT (`lorakit.naming.name_matches`), so a saved `target_modules` means the
same thing in both.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from lorakit.errors import LorakitError
from lorakit.families import family_for, preset_families
from lorakit.naming import layer_index, name_matches

def parse_targets(text: str) -> list[str] | str:
    """A `--targets` value: a preset name, a full-match regex (has `*()[]|\\^$?+`), or
    comma-separated module-name suffixes (``q_proj,v_proj``, ``attn.c_proj``)."""
    text = text.strip()
    if text in ("all-linear", "attention", "mlp") or any(c in text for c in "*()[]|\\^$?+"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def linear_types() -> tuple[type, ...]:
    """Module types lorakit can wrap as linear maps (nn.Linear, GPT-2's Conv1D, lorakit's quantized linears)."""
    from transformers.pytorch_utils import Conv1D

    from lorakit.quant.linear import QuantLinear

    return (nn.Linear, Conv1D, QuantLinear)


def supported_types() -> tuple[type, ...]:
    """Every module type lorakit can wrap."""
    return (*linear_types(), nn.Embedding)


def _output_head_names(model: nn.Module) -> set[str]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return set()
    return {n for n, m in model.named_modules() if m is head}


def resolve_targets(model: nn.Module, targets: list[str] | str) -> list[str] | str:
    """Expand a preset name into the suffix list / regex for this model's architecture."""
    if isinstance(targets, list) or targets not in ("attention", "mlp"):
        return targets
    family = family_for(model)
    if targets not in family.presets:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise LorakitError(
            f"no '{targets}' preset for architecture {model_type!r} (known: {', '.join(preset_families())}); "
            "use --targets all-linear or name the modules"
        )
    return family.presets[targets]


def walk(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """`named_modules` (pre-order, each module once), but adapter wrappers are not entered.

    Not descending into wrappers matters when serving: a model with 9 adapters has ~20 small
    modules inside every wrapped layer, and hot-loading an adapter walks the model twice.
    """
    from lorakit.adapters.layers import LoraLayer
    from lorakit.adapters.modules_to_save import ModulesToSave

    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        if isinstance(module, (LoraLayer, ModulesToSave)):
            continue
        prefix = name + "." if name else ""
        children = [(prefix + child_name, child) for child_name, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))


def iter_targets(model: nn.Module, targets: list[str] | str, layers: list[int] | None = None,
                 exclude: list[str] | None = None) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for every module the adapter should wrap.

    Modules already wrapped by another adapter are yielded as their `LoraLayer` (the caller
    adds to it). Raises a `LorakitError` naming the module if a matched module has a type
    LoRA cannot wrap.
    """
    from lorakit.adapters.layers import LoraLayer, LoraLinear

    all_linear = targets == "all-linear"
    pattern = None if all_linear else resolve_targets(model, targets)
    skip = _output_head_names(model) if all_linear else set()
    exclude = exclude or []
    for name, module in walk(model):
        if not name or name in skip or (exclude and name_matches(name, exclude)):
            continue
        if all_linear:
            if not isinstance(module, (*linear_types(), LoraLinear)):
                continue
        elif not name_matches(name, pattern):
            continue
        if layers is not None and layer_index(name) not in layers:
            continue
        if not isinstance(module, (*supported_types(), LoraLayer)):
            raise LorakitError(
                f"target module '{name}' is a {type(module).__name__}; LoRA wraps Linear, Conv1D and Embedding only"
            )
        yield name, module


def suffix_names(names: list[str]) -> list[str]:
    """Short unique suffixes (``q_proj``) for a saved `target_modules` list, as PEFT writes it."""
    return sorted({n.rsplit(".", 1)[-1] for n in names})
