"""Adapters on any transformers model, in place: inject, switch, disable, merge, unload.

The model keeps its own class (generation, training and saving code see the same
object); wrapped modules replace the originals on their parent. Adapter bookkeeping
lives in ``model.lorakit_adapters`` (name -> `AdapterInfo`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from lorakit.adapters.config import LoraConfig
from lorakit.adapters.embedding import LoraEmbedding
from lorakit.adapters.layers import LoraLayer, LoraLinear
from lorakit.adapters.modules_to_save import ModulesToSave
from lorakit.adapters.targets import iter_targets, resolve_targets, walk
from lorakit.errors import LorakitError
from lorakit.naming import name_matches


@dataclass
class AdapterInfo:
    """One named adapter: its config and the full names of the modules it wraps."""

    config: LoraConfig
    modules: list[str] = field(default_factory=list)
    saved_modules: list[str] = field(default_factory=list)


def adapters(model: nn.Module) -> dict[str, AdapterInfo]:
    """The adapters on `model`, by name (empty dict if none)."""
    return model.__dict__.setdefault("lorakit_adapters", {})


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """``(module_name, layer)`` of every LoRA layer in `model`."""
    for name, module in walk(model):
        if isinstance(module, LoraLayer):
            yield name, module


def saved_module_wrappers(model: nn.Module) -> Iterator[tuple[str, ModulesToSave]]:
    """``(module_name, wrapper)`` of every modules_to_save wrapper in `model`."""
    for name, module in walk(model):
        if isinstance(module, ModulesToSave):
            yield name, module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _wrap(module: nn.Module, name: str, config: LoraConfig, init_weights: bool) -> LoraLayer:
    if isinstance(module, nn.Embedding):
        return LoraEmbedding.from_base(module, name, config, init_weights)
    return LoraLinear.from_base(module, name, config, init_weights)


def plan_targets(model: nn.Module, config: LoraConfig) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """Modules adapter `config` would wrap and modules it would save in full; changes nothing.

    Raises `LorakitError` when the targets match nothing or match a module LoRA cannot wrap.
    """
    save = config.modules_to_save or []
    targets = list(iter_targets(model, config.target_modules, config.layers_to_transform, exclude=save))
    if not targets:
        sample = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]
        raise LorakitError(
            f"target_modules={config.target_modules!r} matched no module of {type(model).__name__}"
            f" (linear modules look like: {', '.join(sample)}, ...)"
        )
    saved = [(n, m) for n, m in walk(model) if n and name_matches(n, save)] if save else []
    if save and not saved:
        raise LorakitError(f"modules_to_save={save!r} matched no module of {type(model).__name__}")
    return targets, saved


def add_adapter(model: nn.Module, config: LoraConfig, name: str = "default", *, init_weights: bool = True,
                plan: tuple | None = None, parts: dict[str, dict[str, nn.Module]] | None = None) -> AdapterInfo:
    """Inject adapter `name` into `model` (in place) and make only adapter weights trainable.

    Everything is validated before the model is touched: on error the model is unchanged.
    A loader that overwrites the weights at once passes ``init_weights=False`` and the
    `plan_targets` result it already computed; one that built the factor modules already
    (`lorakit.adapters.io.prepare_adapter`, every target a LoRA layer) passes them as `parts`
    (module name -> modules), and nothing is allocated here.
    """
    registry = adapters(model)
    if name in registry:
        raise LorakitError(f"an adapter named '{name}' is already loaded; pick another name or delete it first")
    targets, saved = plan if plan is not None else plan_targets(model, config)
    previously_active = active_adapters(model)
    if not registry:
        model.requires_grad_(False)
    info = AdapterInfo(config=config)
    layers = []
    for module_name, module in targets:
        own = config.for_module(module_name)  # rank_pattern / alpha_pattern
        if parts is not None:
            module.adopt_adapter(name, own, parts[module_name])
        elif isinstance(module, LoraLayer):
            module.add_adapter(name, own, init_weights)
        else:
            module = _wrap(module, name, own, init_weights)
            _replace(model, module_name, module)
        info.modules.append(module_name)
        layers.append(module)
    for module_name, module in saved:
        if isinstance(module, ModulesToSave):
            module.add_adapter(name)
        else:
            _replace(model, module_name, ModulesToSave.from_base(module, name))
        info.saved_modules.append(module_name)
    registry[name] = info
    # adding an adapter does not change which one runs (as in PEFT), except for the first;
    # only the newly wrapped layers need telling
    active = previously_active or [name]
    for layer in layers:  # the objects themselves: get_submodule walks the tree for every module
        layer.active_adapters = [n for n in active if n in layer.r]
    for module_name in info.saved_modules:
        model.get_submodule(module_name).set_adapter(active)
    return info


def set_adapter(model: nn.Module, names: str | list[str]) -> None:
    """Make `names` the active adapter(s); the others stay loaded but unused."""
    names = [names] if isinstance(names, str) else list(names)
    missing = [n for n in names if n not in adapters(model)]
    if missing:
        raise LorakitError(f"no adapter named {missing[0]!r}; loaded: {', '.join(adapters(model)) or 'none'}")
    for _, layer in adapter_layers(model):
        if layer.merged:
            raise LorakitError("unmerge() before switching adapters: merged weights hold the previous adapter")
        layer.active_adapters = [n for n in names if n in layer.r]
    for _, wrapper in saved_module_wrappers(model):
        wrapper.set_adapter(names)


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters that run in the forward pass now."""
    active: list[str] = []
    for _, layer in adapter_layers(model):
        active += [n for n in layer.active_adapters if n not in active]
    return active


@contextmanager
def disable_adapters(model: nn.Module):
    """Run the base model inside the block (merged adapters are unmerged first)."""
    unmerge(model)
    layers = [m for _, m in adapter_layers(model)] + [m for _, m in saved_module_wrappers(model)]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def _untie_adapted_embeddings(model: nn.Module) -> None:
    """Give an adapted input embedding its own table before merging into it.

    With tied embeddings (SmolLM2, Gemma) the output head reads the same tensor; merging an
    embedding update into it would change the head too, which the unmerged model does not do.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = getattr(head, "base_layer", head)  # an adapted head: the weight is its base layer's
    for _, layer in adapter_layers(model):
        base = layer.base_layer
        if isinstance(layer, LoraEmbedding) and head is not None and base.weight is head.weight:
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
            if getattr(model, "config", None) is not None:
                model.config.tie_word_embeddings = False


@contextmanager
def adapter_rows(model: nn.Module, names: list[str | None]):
    """Inside the block, batch row i runs adapter ``names[i]`` (None: the base model).

    One forward serves requests for different adapters together (as vLLM/S-LoRA do on GPUs).
    """
    unknown = sorted({n for n in names if n is not None and n not in adapters(model)})
    if unknown:
        raise LorakitError(f"no adapter named {unknown[0]!r}; loaded: {', '.join(adapters(model)) or 'none'}")
    layers = [layer for _, layer in adapter_layers(model)]
    if any(layer.merged for layer in layers):
        raise LorakitError("unmerge() before mixed-adapter batches: merged weights hold one adapter for every row")
    for layer in layers:
        layer.row_adapters = list(names)
    try:
        yield model
    finally:
        for layer in layers:
            layer.row_adapters = None


def merge(model: nn.Module, names: list[str] | None = None) -> None:
    """Fold the active (or given) adapters into the base weights: zero added latency."""
    _untie_adapted_embeddings(model)
    for _, layer in adapter_layers(model):
        layer.merge(names)


def unmerge(model: nn.Module) -> None:
    """Restore the base weights after `merge`."""
    for _, layer in adapter_layers(model):
        layer.unmerge()


def _strip(model: nn.Module, keep_merged: bool) -> nn.Module:
    for name, layer in list(adapter_layers(model)):
        if not keep_merged:
            layer.unmerge()
        _replace(model, name, layer.base_layer)
    for name, wrapper in list(saved_module_wrappers(model)):
        _replace(model, name, wrapper.current() if keep_merged else wrapper.original_module)
    adapters(model).clear()
    return model


def merge_and_unload(model: nn.Module, names: list[str] | None = None) -> nn.Module:
    """Merge the active (or given) adapters and return the plain transformers model."""
    merge(model, names)
    return _strip(model, keep_merged=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging and return the original model."""
    return _strip(model, keep_merged=False)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter `name`; layers left with no adapter go back to their base module."""
    registry = adapters(model)
    if name not in registry:
        raise LorakitError(f"no adapter named {name!r}; loaded: {', '.join(registry) or 'none'}")
    for module_name, layer in list(adapter_layers(model)):
        layer.delete_adapter(name)
        if not layer.adapter_names:
            _replace(model, module_name, layer.base_layer)
    for module_name, wrapper in list(saved_module_wrappers(model)):
        wrapper.delete_adapter(name)
        if not wrapper.adapter_names:
            _replace(model, module_name, wrapper.original_module)
    del registry[name]


def adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Every weight of adapter `name`: LoRA factors, DoRA magnitudes, saved-module copies."""
    params: list[nn.Parameter] = []
    for _, wrapper in [*adapter_layers(model), *saved_module_wrappers(model)]:
        params += wrapper.adapter_parameters(name).values()
    return params


def set_trainable(model: nn.Module, names: str | list[str] | None) -> None:
    """Only the weights of adapters `names` train (None: nothing trains)."""
    names = [] if names is None else [names] if isinstance(names, str) else list(names)
    model.requires_grad_(False)
    for name in names:
        for p in adapter_parameters(model, name):
            p.requires_grad_(True)


__all__ = [
    "AdapterInfo", "adapters", "adapter_layers", "saved_module_wrappers", "plan_targets", "add_adapter",
    "set_adapter", "active_adapters", "adapter_rows", "disable_adapters", "merge", "unmerge", "merge_and_unload", "unload",
    "delete_adapter", "adapter_parameters", "set_trainable", "resolve_targets",
]
