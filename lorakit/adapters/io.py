"""Adapter files in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

Keys are ``base_model.model.<module>.<param>`` with the adapter name removed, exactly
as PEFT writes them, so adapters move between lorakit, PEFT and vLLM. Only
safetensors are read: pickled `.bin` adapters are refused. A load checks every key
and shape against the model before touching it, so a failed load changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.adapters.config import LoraConfig
from lorakit.adapters.dora import DoraMagnitude
from lorakit.adapters.embedding import LoraEmbedding
from lorakit.adapters.layers import LoraLayer, LoraLinear, linear_holding, make_dropout
from lorakit.adapters.model import (
    AdapterInfo,
    adapters,
    add_adapter,
    delete_adapter,
    plan_targets,
)
from lorakit.adapters.targets import iter_targets, suffix_names
from lorakit.adapters.tasks import SEQ_CLS, config_for_model, task_type
from lorakit.errors import AdapterLoadError, LorakitError, one_line

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# a SEQ_CLS adapter's class names, ``{"id2label": {"0": NAME, ...}}`` as in a model's config.json:
# PEFT keeps no labels with an adapter (and ignores this file), so a server could not name classes
LABELS_NAME = "labels.json"
PREFIX = "base_model.model."
# peft_type -> loader of a non-LoRA adapter folder; `lorakit.adapters.prompt_io` registers prefix and
# prompt tuning here (so that this module need not import that one, which imports this)
OTHER_LOADERS: dict[str, Callable[..., Any]] = {}


def _saved_targets(model: nn.Module, info: AdapterInfo) -> list[str] | str:
    """A `target_modules` value that selects exactly the wrapped modules when PEFT re-reads it.

    Short suffixes (``q_proj``) are what PEFT and vLLM expect; when they would select more
    modules than were wrapped (e.g. GPT-2's ``attn.c_proj`` vs ``mlp.c_proj``), fall back to the
    user's list, then to a regex of the full names.
    """
    wrapped = set(info.modules)
    cfg = info.config
    candidates: list[list[str] | str] = [suffix_names(info.modules)]
    if isinstance(cfg.target_modules, list):
        candidates.append(cfg.target_modules)
    for cand in candidates:
        try:
            chosen = {n for n, _ in iter_targets(model, cand, cfg.layers_to_transform, exclude=cfg.modules_to_save)}
        except LorakitError:
            continue
        if chosen == wrapped:
            return cand
    return "|".join(sorted(n.replace(".", r"\.") for n in wrapped))


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """PEFT-keyed tensors of adapter `name` (LoRA factors, DoRA magnitudes, saved modules)."""
    info = adapters(model).get(name)
    if info is None:
        raise LorakitError(f"no adapter named {name!r} to save; loaded: {', '.join(adapters(model)) or 'none'}")
    state: dict[str, torch.Tensor] = {}
    for module_name in info.modules:
        layer = model.get_submodule(module_name)
        for key, p in layer.adapter_parameters(name).items():
            state[f"{PREFIX}{module_name}.{key}"] = p.detach().cpu().contiguous()
    for module_name in info.saved_modules:
        wrapper = model.get_submodule(module_name)
        for key, p in wrapper.adapter_parameters(name).items():
            state[f"{PREFIX}{module_name}.{key}"] = p.detach().cpu().contiguous()
    return state


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, name: str = "default",
                 base_model_name_or_path: str | None = None, revision: str | None = None) -> Path:
    """Write adapter `name` as PEFT files into `out_dir` (each file replaced atomically)."""
    out = Path(out_dir)
    info = adapters(model).get(name)
    state = adapter_state_dict(model, name)
    base = base_model_name_or_path or getattr(getattr(model, "config", None), "name_or_path", None) or None
    config = info.config.to_peft(_saved_targets(model, info), base, task_type(model), revision)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-tmp-", dir=out))
    try:
        save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        files = [WEIGHTS_NAME, CONFIG_NAME]
        labels = labels_json(model)
        if labels is not None:
            (tmp / LABELS_NAME).write_text(labels)
            files.append(LABELS_NAME)
        for fname in files:
            os.replace(tmp / fname, out / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def labels_json(model: nn.Module) -> str | None:
    """The `labels.json` text a classifier's adapter is saved with (its class names), None for other models."""
    id2label = getattr(model.config, "id2label", None) if task_type(model) == SEQ_CLS else None
    if not id2label:
        return None
    return json.dumps({"id2label": {str(i): id2label[i] for i in sorted(id2label)}}, indent=1, ensure_ascii=False) + "\n"


def read_adapter_config(path: str | os.PathLike) -> LoraConfig:
    """Parse `adapter_config.json` in directory `path` into a `LoraConfig`."""
    cfg_file = Path(path) / CONFIG_NAME
    data = read_config_json(path)
    try:
        return LoraConfig.from_peft(data, source=str(cfg_file))
    except LorakitError as exc:
        raise AdapterLoadError(str(exc)) from None


def read_config_json(path: str | os.PathLike) -> dict:
    """`adapter_config.json` in directory `path` as the JSON object it holds (any peft_type);
    a missing, unreadable or malformed file is a one-line `AdapterLoadError` naming it."""
    cfg_file = Path(path) / CONFIG_NAME
    if not cfg_file.is_file():
        raise AdapterLoadError(f"{cfg_file}: not found; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AdapterLoadError(f"{cfg_file}: cannot read ({exc.strerror}); check its permissions") from None
    except RecursionError:
        raise AdapterLoadError(f"{cfg_file}: not valid JSON (nested too deep); re-save the adapter") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number past Python's digit limit
        raise AdapterLoadError(f"{cfg_file}: not valid JSON ({one_line(exc, 120)}); re-save the adapter") from None
    if not isinstance(data, dict):
        raise AdapterLoadError(f"{cfg_file}: expected a JSON object")
    return data


def read_adapter_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of `adapter_model.safetensors` in directory `path`; pickled files are refused."""
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        pickled = Path(path) / "adapter_model.bin"
        if pickled.is_file():
            raise AdapterLoadError(
                f"{pickled}: pickled adapters are not loaded (they can run code). Convert it once where you trust it: "
                "python -c \"import torch; from safetensors.torch import save_file; "
                "save_file(torch.load('adapter_model.bin', weights_only=True), 'adapter_model.safetensors')\""
            )
        raise AdapterLoadError(f"{weights}: not found; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return load_file(weights)
    # the library's own error, or what torch raises building a tensor from a header it accepted
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise AdapterLoadError(f"{weights}: truncated or corrupt safetensors file ({one_line(exc, 160)}); "
                               "save or copy it again") from None


def _expected(model: nn.Module, config: LoraConfig, plan: tuple) -> tuple[dict[str, tuple[str, str, tuple]], set[str]]:
    """Key -> (module, local key, shape) an adapter with `config` must provide, and keys PEFT may add."""
    targets, saved = plan
    expected: dict[str, tuple[str, str, tuple]] = {}
    optional: set[str] = set()
    for module_name, module in targets:
        base = module.base_layer if isinstance(module, LoraLayer) else module
        cls = LoraEmbedding if isinstance(base, nn.Embedding) else LoraLinear
        for key, shape in cls.param_shapes(base, config.for_module(module_name)).items():
            expected[f"{PREFIX}{module_name}.{key}"] = (module_name, key, shape)
        # PEFT also saves the base embedding table when embeddings are targeted
        optional |= {f"{PREFIX}{module_name}.base_layer.{k}" for k, _ in base.named_parameters()}
    for module_name, module in saved:
        original = getattr(module, "original_module", module)
        for key, p in original.named_parameters():
            expected[f"{PREFIX}{module_name}.{key}"] = (module_name, key, tuple(p.shape))
    return expected, optional


@dataclass
class PreparedAdapter:
    """An adapter read from disk, checked against a model and built beside it, not yet in it.

    `prepare_adapter` makes one without touching the model (so a server can do it on any
    thread while the model serves); `attach_adapter` then puts it in, which is cheap when every
    target is already a LoRA linear: the new factor modules are inserted, nothing is copied.
    """

    path: Path
    name: str
    config: LoraConfig
    plan: tuple
    expected: dict[str, tuple[str, str, tuple]]
    tensors: dict[str, torch.Tensor]
    trainable: bool
    # module name -> ready {"lora_A", "lora_B", "lora_dropout"[, "lora_magnitude_vector"]} modules;
    # None when some target still needs wrapping (then attach builds through add_adapter)
    parts: dict[str, dict[str, nn.Module]] | None = None


def _build_parts(model: nn.Module, prepared: PreparedAdapter) -> dict[str, dict[str, nn.Module]] | None:
    """Ready modules per target when every target is a LoRA linear and nothing is saved in full."""
    targets, saved = prepared.plan
    if saved or not all(isinstance(m, LoraLinear) for _, m in targets):
        return None
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, (module_name, local, _) in prepared.expected.items():
        by_module.setdefault(module_name, {})[local] = prepared.tensors[key]
    cfg, grad = prepared.config, prepared.trainable
    parts: dict[str, dict[str, nn.Module]] = {}
    for module_name, layer in targets:
        opts = layer.factor_options()
        given = by_module[module_name]
        own = {k: t.to(**opts, copy=True).contiguous() for k, t in given.items()}  # never a view of the file
        parts[module_name] = {
            "lora_A": linear_holding(own["lora_A.weight"], grad),
            "lora_B": linear_holding(own["lora_B.weight"], grad),
            "lora_dropout": make_dropout(cfg),
        }
        if "lora_magnitude_vector" in own:
            magnitude = DoraMagnitude(layer.out_features, **opts)
            magnitude.weight = nn.Parameter(own["lora_magnitude_vector"], requires_grad=grad)
            parts[module_name]["lora_magnitude_vector"] = magnitude
    return parts


# which axis of each LoRA factor is the rank
_RANK_AXIS = {"lora_A.weight": 0, "lora_B.weight": 1, "lora_embedding_A": 0, "lora_embedding_B": 1}


def prepare_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default", *,
                    trainable: bool = False) -> PreparedAdapter:
    """Read the PEFT adapter at `path`, check every key and shape against `model`, and build its
    tensors; the model is only read, never changed. Raises `AdapterLoadError` on any problem."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"{path}: adapter directory not found")
    config = read_adapter_config(path)
    tensors = read_adapter_weights(path)
    weights = path / WEIGHTS_NAME
    if name in adapters(model):
        raise AdapterLoadError(f"{path}: an adapter named '{name}' is already loaded; load it under another name")
    # its task_type fits the model's; a SEQ_CLS adapter's classifier head joins modules_to_save (as in PEFT)
    config = config_for_model(model, read_config_json(path), config, tensors, path, PREFIX)
    try:
        plan = plan_targets(model, config)
        expected, optional = _expected(model, config, plan)
    except LorakitError as exc:
        raise AdapterLoadError(f"{path}: {exc} (was this adapter trained for a different base model?)") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - optional)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"has {unexpected[0]}, which is no module of this model"
        raise AdapterLoadError(f"{weights}: {what} ({len(missing)} missing, {len(unexpected)} unexpected keys); "
                               "was it trained for a different base model?")
    for key, (module_name, local, shape) in expected.items():
        got = tuple(tensors[key].shape)
        # a factor that fits the module but not the config's r: the config is what is wrong
        rank_axis = _RANK_AXIS.get(local)
        if rank_axis is not None and len(got) == 2 and got[rank_axis] != shape[rank_axis] and \
                got[1 - rank_axis] == shape[1 - rank_axis]:
            raise AdapterLoadError(f"{path / CONFIG_NAME} says r={shape[rank_axis]} but {weights.name}'s {key} has rank "
                                   f"{got[rank_axis]}: the config and the weights disagree; re-save the adapter")
        if got != shape:
            raise AdapterLoadError(f"{weights}: {key} has shape {tuple(tensors[key].shape)} but module "
                                   f"'{module_name}' needs {shape}; the adapter was trained for a different base model")
    for key in expected:
        _check_values(weights, key, tensors[key])
    prepared = PreparedAdapter(path, name, config, plan, expected, tensors, trainable)
    prepared.parts = _build_parts(model, prepared)
    return prepared


_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_values(weights: Path, key: str, tensor: torch.Tensor) -> None:
    """Refuse a weight that is not floating point or holds NaN/inf: it would load and then poison
    every output (or the training loss) silently."""
    if tensor.dtype not in _WEIGHT_DTYPES:  # float8 and the like: no sum, no matmul with the model's weights
        raise AdapterLoadError(f"{weights}: {key} has dtype {str(tensor.dtype).removeprefix('torch.')}; adapter "
                               "weights are floating point (float32, bfloat16 or float16): re-save the adapter")
    # a sum is non-finite whenever an element is (cheaper than isfinite per element on hundreds of
    # small factors); it can also overflow on huge finite values, so the exact check confirms
    if not bool(tensor.sum().isfinite()) and not bool(torch.isfinite(tensor).all()):
        raise AdapterLoadError(f"{weights}: {key} holds NaN or infinite values; the run that wrote it diverged: "
                               "use an earlier checkpoint or retrain with a lower --lr")


def _plan_current(model: nn.Module, prepared: PreparedAdapter) -> bool:
    """Whether every planned module is still the one at its name (an unload may have unwrapped it)."""
    def at(name: str) -> nn.Module | None:  # plain dict reads: get_submodule adds checks per step of the path
        module = model
        for part in name.split(".") if name else ():
            module = module._modules.get(part) if module is not None else None
        return module

    targets, saved = prepared.plan
    return all(at(n) is m for n, m in (*targets, *saved))


def attach_adapter(model: nn.Module, prepared: PreparedAdapter) -> AdapterInfo:
    """Put a `prepare_adapter` result into `model` as adapter ``prepared.name``.

    Cheap (no file reads, no tensor copies) when every target was a LoRA linear already; else, or
    when the model changed since `prepare_adapter` in a way that matters, it is built as
    `load_adapter` always did. On any error the model is left exactly as it was.
    """
    name = prepared.name
    if name in adapters(model):
        raise AdapterLoadError(f"{prepared.path}: an adapter named '{name}' is already loaded; "
                               "load it under another name")
    if not _plan_current(model, prepared):
        prepared = prepare_adapter(model, prepared.path, name, trainable=prepared.trainable)
    if prepared.parts is not None:  # every target a LoRA layer: insert the ready modules, copy nothing
        return add_adapter(model, prepared.config, name, init_weights=False, plan=prepared.plan, parts=prepared.parts)
    info = add_adapter(model, prepared.config, name, init_weights=False, plan=prepared.plan)
    try:
        with torch.no_grad():
            for key, (module_name, local, _) in prepared.expected.items():
                wrapper = model.get_submodule(module_name)
                target = wrapper.adapter_parameters(name)[local]
                target.copy_(prepared.tensors[key].to(target.dtype))
    except BaseException:
        delete_adapter(model, name)
        raise
    for module_name in (*info.modules, *info.saved_modules):
        for p in model.get_submodule(module_name).adapter_parameters(name).values():
            p.requires_grad_(prepared.trainable)
    return info


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default", *,
                 trainable: bool = False) -> AdapterInfo:
    """Load a PEFT-format adapter directory into `model` as adapter `name`.

    Every key and shape is checked first; on any error the model is left exactly as it was. A folder
    whose peft_type has a loader in `OTHER_LOADERS` (PREFIX_TUNING, PROMPT_TUNING) goes to it.
    """
    if (Path(path) / CONFIG_NAME).is_file():
        peft_type = read_config_json(path).get("peft_type")
        other = OTHER_LOADERS.get(peft_type.upper()) if isinstance(peft_type, str) else None
        if other is not None:
            return other(model, path, name, trainable=trainable)
    return attach_adapter(model, prepare_adapter(model, path, name, trainable=trainable))
