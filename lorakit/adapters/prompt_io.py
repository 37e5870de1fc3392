"""Prefix- and prompt-tuning adapters in PEFT's files, both ways.

`adapter_config.json` carries PEFT's fields (peft/config.py ``PromptLearningConfig`` and the two
method configs), the model facts included (num_layers, token_dim, num_attention_heads: for prefix
tuning with grouped-query attention, the KV heads and their width). `adapter_model.safetensors`
holds ``prompt_embeddings`` (peft/tuners/tuners_utils.py ``BasePromptEncoder``): prefix
(N, layers*2*token_dim), the MLP's output when `prefix_projection` was on; prompt (N, hidden size).
A sequence classifier's adapter (``task_type: SEQ_CLS``) also holds its trained head, as
``base_model.<head>.<param>`` (`lorakit.adapters.virtual_cls`), with the head in `modules_to_save`
and the class names in `labels.json` as for a LoRA classifier. Importing this module registers the
loader with `lorakit.adapters.io.load_adapter`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from lorakit.adapters.io import (
    CONFIG_NAME,
    LABELS_NAME,
    OTHER_LOADERS,
    WEIGHTS_NAME,
    labels_json,
    read_adapter_weights,
    read_config_json,
)
from lorakit.adapters.prefix import PrefixTuningConfig, add_prefix_tuning, check_prefix_model
from lorakit.adapters.prompt import PromptTuningConfig, add_prompt_tuning
from lorakit.adapters.virtual import (
    CAUSAL_LM,
    VirtualAdapter,
    VirtualShape,
    check_base,
    model_shape,
    model_task,
    virtual_adapter,
)
from lorakit.adapters.tasks import SEQ_CLS, check_task
from lorakit.adapters.virtual_cls import check_head_tensors, head_shapes, head_state, load_heads
from lorakit.atomic import atomic_write
from lorakit.errors import AdapterLoadError, LorakitError, short_repr

TENSOR = "prompt_embeddings"
PEFT_TYPES = ("PREFIX_TUNING", "PROMPT_TUNING")
_PROMPT_INITS = {"RANDOM": "random", "TEXT": "text", "SAMPLE_VOCAB": "sample_vocab"}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
TASKS = (CAUSAL_LM, SEQ_CLS)


def peft_config(record: VirtualAdapter, base_model: str | None = None, revision: str | None = None) -> dict[str, Any]:
    """The `adapter_config.json` dict PEFT writes for this adapter (inference_mode true, as PEFT saves)."""
    cfg, shape = record.config, record.shape
    data: dict[str, Any] = {
        "peft_type": cfg.peft_type, "task_type": record.task, "base_model_name_or_path": base_model,
        "revision": revision, "num_virtual_tokens": cfg.num_virtual_tokens, "token_dim": shape.token_dim,
        "num_transformer_submodules": 1, "num_attention_heads": shape.num_attention_heads,
        "num_layers": shape.num_layers, "inference_mode": True, "modules_to_save": list(record.heads) or None,
    }
    if isinstance(cfg, PrefixTuningConfig):
        data.update(encoder_hidden_size=cfg.encoder_hidden_size or shape.token_dim,
                    prefix_projection=cfg.prefix_projection, init_weights="zero" if cfg.init == "zero" else None)
    else:
        data.update(prompt_tuning_init=cfg.init.upper(), prompt_tuning_init_text=cfg.init_text,
                    tokenizer_name_or_path=cfg.tokenizer_name_or_path, tokenizer_kwargs=None)
    return data


def save_virtual_adapter(model: torch.nn.Module, out_dir: str | os.PathLike, *,
                         base_model_name_or_path: str | None = None, revision: str | None = None) -> Path:
    """Write the model's prefix/prompt adapter as PEFT files into `out_dir` (each file atomically); a
    classifier's adapter with its head and labels.json."""
    record = virtual_adapter(model)
    if record is None:
        raise LorakitError(f"{type(model).__name__} has no prefix or prompt tuning adapter to save")
    base = base_model_name_or_path or getattr(getattr(model, "config", None), "name_or_path", None) or None
    with torch.no_grad():  # the prefix as the model uses it: an MLP's output, not its input
        tensor = record.encoder().detach().to("cpu", torch.float32).contiguous()
    tensors = {TENSOR: tensor, **head_state(model, record.name, record.heads)}
    out = Path(out_dir)
    atomic_write(out / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"format": "pt"}))
    labels = labels_json(model)
    if labels is not None:
        atomic_write(out / LABELS_NAME, labels.encode())
    atomic_write(out / CONFIG_NAME, json.dumps(peft_config(record, base, revision), indent=2, sort_keys=True) + "\n")
    return out


def _int_field(data: dict, key: str, source: str, required: bool = False) -> int | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AdapterLoadError(f"{source}: '{key}' must be a positive integer, got {short_repr(value)}; "
                               "re-save the adapter")
    return value


def read_virtual_config(path: str | os.PathLike) -> tuple[PrefixTuningConfig | PromptTuningConfig, dict[str, int | None]]:
    """The config of the prefix/prompt adapter folder `path` and the model facts it declares
    (None where the file leaves them for the model to fill); refuses what lorakit cannot load."""
    source = str(Path(path) / CONFIG_NAME)
    data = read_config_json(path)
    peft_type = data.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise AdapterLoadError(f"{source}: peft_type {short_repr(peft_type)} is not PREFIX_TUNING or PROMPT_TUNING")
    task = data.get("task_type")
    if task not in TASKS:
        raise AdapterLoadError(f"{source}: task_type {short_repr(task)}: lorakit loads {peft_type} adapters for "
                               f"{' and '.join(TASKS)} only")
    submodules = data.get("num_transformer_submodules")
    if submodules is not None and (type(submodules) is not int or submodules != 1):
        raise AdapterLoadError(f"{source}: num_transformer_submodules={short_repr(submodules)}"
                               " (an encoder-decoder adapter); lorakit loads decoder-only (1) adapters")
    saved = data.get("modules_to_save")
    if saved and (task != SEQ_CLS or not isinstance(saved, list) or not all(isinstance(m, str) for m in saved)):
        raise AdapterLoadError(f"{source}: modules_to_save {short_repr(saved)} with {peft_type}: only a SEQ_CLS "
                               "adapter's classifier head (a list of module names) is supported")
    declared = {k: _int_field(data, k, source) for k in ("num_layers", "token_dim", "num_attention_heads")}
    n = _int_field(data, "num_virtual_tokens", source, required=True)
    try:
        if peft_type == "PREFIX_TUNING":
            if data.get("init_weights") not in (None, "zero"):
                raise LorakitError(f"'init_weights' must be null or \"zero\", got {short_repr(data.get('init_weights'))}")
            projection = data.get("prefix_projection")
            config = PrefixTuningConfig(num_virtual_tokens=n, prefix_projection=False if projection is None else projection,
                                        encoder_hidden_size=data.get("encoder_hidden_size"),
                                        init="zero" if data.get("init_weights") == "zero" else "random")
        else:
            init = data.get("prompt_tuning_init") or "RANDOM"
            if init not in _PROMPT_INITS:
                raise LorakitError(f"'prompt_tuning_init' {short_repr(init)} is not one of {', '.join(_PROMPT_INITS)}")
            config = PromptTuningConfig(num_virtual_tokens=n, init=_PROMPT_INITS[init],
                                        init_text=data.get("prompt_tuning_init_text"),
                                        tokenizer_name_or_path=data.get("tokenizer_name_or_path"))
    except LorakitError as exc:
        raise AdapterLoadError(f"{source}: {exc}") from None
    return config, declared


def _check_shape(source: str, declared: dict[str, int | None], shape: VirtualShape) -> None:
    for key, value in declared.items():
        if value is not None and value != getattr(shape, key):
            raise AdapterLoadError(f"{source}: {key}={value} but the model has {getattr(shape, key)}; "
                                   "the adapter was trained for a different base model")


def _adapter_tensors(model: torch.nn.Module, path: Path, want: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The folder's tensors, checked: ``prompt_embeddings`` of shape `want`, and for a classifier its
    head's keys and shapes (`virtual_cls.check_head_tensors`); nothing else, all floating point and finite."""
    weights = path / WEIGHTS_NAME
    tensors = read_adapter_weights(path)
    expected = {TENSOR, *head_shapes(model)}
    if TENSOR not in tensors or set(tensors) - expected:
        other = sorted(set(tensors) - expected)
        what = f"has {other[0]}" if other else f"has no {TENSOR}"
        held = f"{TENSOR} and the classifier head" if len(expected) > 1 else f"one tensor, {TENSOR}"
        raise AdapterLoadError(f"{weights}: {what}; this model's prefix/prompt adapter holds {held}")
    check_head_tensors(model, tensors, weights)
    tensor = tensors[TENSOR]
    if tuple(tensor.shape) != want:
        raise AdapterLoadError(f"{weights}: {TENSOR} has shape {tuple(tensor.shape)} but the config and the model "
                               f"need {want}; re-save the adapter or use the base model it was trained for")
    for key, value in tensors.items():
        if value.dtype not in _FLOATS:
            raise AdapterLoadError(f"{weights}: {key} has dtype {str(value.dtype).removeprefix('torch.')}; "
                                   "it must be floating point: re-save the adapter")
        if not bool(torch.isfinite(value).all()):
            raise AdapterLoadError(f"{weights}: {key} holds NaN or infinite values; use an earlier checkpoint")
    return tensors


def virtual_peft_type(path: str | os.PathLike) -> str | None:
    """PREFIX_TUNING or PROMPT_TUNING when folder `path` holds such an adapter, else None (also for a
    missing or unreadable config: the LoRA loader then says what is wrong with it)."""
    try:
        peft_type = read_config_json(path).get("peft_type")
    except AdapterLoadError:
        return None
    peft_type = peft_type.upper() if isinstance(peft_type, str) else None
    return peft_type if peft_type in PEFT_TYPES else None


def read_virtual_folder(model: torch.nn.Module, path: str | os.PathLike, trainable: bool = False
                        ) -> tuple[PrefixTuningConfig | PromptTuningConfig, dict[str, torch.Tensor], VirtualShape]:
    """``(config, tensors, shape)`` of the prefix/prompt folder `path`, every field and tensor checked
    against `model` (which is not changed)."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"{path}: adapter directory not found")
    config, declared = read_virtual_config(path)
    source = str(path / CONFIG_NAME)
    prefix = isinstance(config, PrefixTuningConfig)
    if prefix and config.prefix_projection and trainable:
        raise AdapterLoadError(f"{source}: a prefix trained with prefix_projection holds the MLP's output only, so it "
                               "cannot train on (PEFT cannot either); load it with trainable=False")
    try:
        check_base(model)
        if prefix:
            check_prefix_model(model)
        shape = model_shape(model, prefix=prefix)
    except LorakitError as exc:
        raise AdapterLoadError(f"{path}: {exc}") from None
    check_task(model, read_config_json(path), path, ours=model_task(model))
    _check_shape(source, declared, shape)
    n = config.num_virtual_tokens
    tensors = _adapter_tensors(model, path, (n, shape.num_layers * 2 * shape.token_dim) if prefix else (n, shape.token_dim))
    return config, tensors, shape


def read_virtual_adapter(model: torch.nn.Module, path: str | os.PathLike, *, trainable: bool = False
                         ) -> tuple[PrefixTuningConfig | PromptTuningConfig, torch.Tensor, VirtualShape]:
    """``(config, prompt_embeddings, shape)`` of the prefix/prompt folder `path`, every field and the
    tensors checked against `model` (which is not changed). The tensor is (N, layers*2*token_dim) for
    prefix tuning, (N, hidden size) for prompt tuning, as saved."""
    config, tensors, shape = read_virtual_folder(model, path, trainable)
    return config, tensors[TENSOR], shape


def load_virtual_adapter(model: torch.nn.Module, path: str | os.PathLike, name: str = "default", *,
                         trainable: bool = False) -> VirtualAdapter:
    """Load a PEFT prefix- or prompt-tuning folder into causal LM or classifier `model` (a classifier's
    with its trained head); every field and tensor is checked first, so on any error the model is
    left as it was. A prefix trained with `prefix_projection` loads as its saved output (the MLP is
    not in the file), so not trainable."""
    config, tensors, _ = read_virtual_folder(model, path, trainable)
    try:
        return attach_virtual_tensors(model, config, tensors, name, trainable=trainable)
    except AdapterLoadError:
        raise
    except LorakitError as exc:
        raise AdapterLoadError(f"{path}: {exc}") from None


def attach_virtual_tensors(model: torch.nn.Module, config: PrefixTuningConfig | PromptTuningConfig,
                           tensors: dict[str, torch.Tensor], name: str = "default", *,
                           trainable: bool = False) -> VirtualAdapter:
    """Attach what `read_virtual_folder` read from a folder (checked against this `model`): the prefix or
    prompt, and a classifier's head."""
    if isinstance(config, PrefixTuningConfig):
        record = add_prefix_tuning(model, config, name, weights=tensors[TENSOR], trainable=trainable)
    else:
        record = add_prompt_tuning(model, config, name, weights=tensors[TENSOR], trainable=trainable)
    load_heads(model, name, record.heads, tensors)
    return record


OTHER_LOADERS.update({peft_type: load_virtual_adapter for peft_type in PEFT_TYPES})
