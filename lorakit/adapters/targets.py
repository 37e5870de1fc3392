"""Which modules an adapter wraps: per-architecture presets and PEFT's matching rules.

Matching follows PEFT so a saved `target_modules` means the same thing in both:
a list matches a module whose name equals an entry or ends with ``"." + entry``;
a string is a regex that must match the whole module name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import nn

from lorakit.errors import LorakitError

_LLAMA_LIKE = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}

# model_type -> preset -> suffix list or full-match regex. "all-linear" needs no entry:
# it is every Linear/Conv1D except the output head (and modules_to_save).
PRESETS: dict[str, dict[str, list[str] | str]] = {
    "llama": _LLAMA_LIKE,  # SmolLM2
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,  # DeepSeek-R1-Distill-Qwen
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": {"attention": ["qkv_proj", "o_proj"], "mlp": ["gate_up_proj", "down_proj"]},
    "gpt2": {"attention": ["c_attn", "attn.c_proj"], "mlp": ["c_fc", "mlp.c_proj"]},
    "bert": {
        "attention": ["query", "key", "value", "attention.output.dense"],
        "mlp": r".*\.layer\.\d+\.(intermediate|output)\.dense",
    },
    "roberta": {
        "attention": ["query", "key", "value", "attention.output.dense"],
        "mlp": r".*\.layer\.\d+\.(intermediate|output)\.dense",
    },
    "distilbert": {"attention": ["q_lin", "k_lin", "v_lin", "out_lin"], "mlp": ["lin1", "lin2"]},
}

# decoder-block containers whose index `layers_to_transform` refers to
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


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


def name_matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: suffix match for a list, full regex match for a string."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def layer_index(name: str) -> int | None:
    """Index of the decoder block a module lives in (``model.layers.3.mlp`` -> 3), if any."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def _output_head_names(model: nn.Module) -> set[str]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return set()
    return {n for n, m in model.named_modules() if m is head}


def resolve_targets(model: nn.Module, targets: list[str] | str) -> list[str] | str:
    """Expand a preset name into the suffix list / regex for this model's architecture."""
    if isinstance(targets, list) or targets not in ("attention", "mlp"):
        return targets
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    table = PRESETS.get(model_type or "")
    if table is None:
        known = ", ".join(sorted(PRESETS))
        raise LorakitError(
            f"no '{targets}' preset for architecture {model_type!r} (known: {known}); "
            "use --targets all-linear or name the modules"
        )
    return table[targets]


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
