"""Prefix- and prompt-tuning adapters in PEFT's files, both ways.

`adapter_config.json` carries PEFT's fields (peft/config.py ``PromptLearningConfig`` and the two
method configs), the model facts included (num_layers, token_dim, num_attention_heads: for prefix
tuning with grouped-query attention, the KV heads and their width). `adapter_model.safetensors`
holds one tensor, ``prompt_embeddings`` (peft/tuners/tuners_utils.py ``BasePromptEncoder``):
prefix (N, layers*2*token_dim), the MLP's output when `prefix_projection` was on; prompt
(N, hidden size). Importing this module registers the loader with `lorakit.adapters.io.load_adapter`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from lorakit.adapters.io import CONFIG_NAME, OTHER_LOADERS, WEIGHTS_NAME, read_adapter_weights, read_config_json
from lorakit.adapters.prefix import PrefixTuningConfig, add_prefix_tuning, check_prefix_model
from lorakit.adapters.prompt import PromptTuningConfig, add_prompt_tuning
from lorakit.adapters.virtual import (
    CAUSAL_LM,
    VirtualAdapter,
    VirtualShape,
    check_causal_lm,
    model_shape,
    virtual_adapter,
)
from lorakit.atomic import atomic_write
from lorakit.errors import AdapterLoadError, LorakitError, short_repr

TENSOR = "prompt_embeddings"
PEFT_TYPES = ("PREFIX_TUNING", "PROMPT_TUNING")
_PROMPT_INITS = {"RANDOM": "random", "TEXT": "text", "SAMPLE_VOCAB": "sample_vocab"}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def peft_config(record: VirtualAdapter, base_model: str | None = None, revision: str | None = None) -> dict[str, Any]:
    """The `adapter_config.json` dict PEFT writes for this adapter (inference_mode true, as PEFT saves)."""
    cfg, shape = record.config, record.shape
    data: dict[str, Any] = {
        "peft_type": cfg.peft_type, "task_type": CAUSAL_LM, "base_model_name_or_path": base_model,
        "revision": revision, "num_virtual_tokens": cfg.num_virtual_tokens, "token_dim": shape.token_dim,
        "num_transformer_submodules": 1, "num_attention_heads": shape.num_attention_heads,
        "num_layers": shape.num_layers, "inference_mode": True, "modules_to_save": None,
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
    """Write the model's prefix/prompt adapter as PEFT files into `out_dir` (each file atomically)."""
    record = virtual_adapter(model)
    if record is None:
        raise LorakitError(f"{type(model).__name__} has no prefix or prompt tuning adapter to save")
    base = base_model_name_or_path or getattr(getattr(model, "config", None), "name_or_path", None) or None
    with torch.no_grad():  # the prefix as the model uses it: an MLP's output, not its input
        tensor = record.encoder().detach().to("cpu", torch.float32).contiguous()
    out = Path(out_dir)
    atomic_write(out / WEIGHTS_NAME, safetensors_bytes({TENSOR: tensor}, metadata={"format": "pt"}))
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
    if data.get("task_type") != CAUSAL_LM:
        raise AdapterLoadError(f"{source}: task_type {short_repr(data.get('task_type'))}: lorakit loads {peft_type} "
                               f"adapters for CAUSAL_LM only")
    submodules = data.get("num_transformer_submodules")
    if submodules is not None and (type(submodules) is not int or submodules != 1):
        raise AdapterLoadError(f"{source}: num_transformer_submodules={short_repr(submodules)}"
                               " (an encoder-decoder adapter); lorakit loads decoder-only (1) adapters")
    if data.get("modules_to_save"):
        raise AdapterLoadError(f"{source}: modules_to_save with {peft_type} is not supported")
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


def _prompt_tensor(path: Path, want: tuple[int, int]) -> torch.Tensor:
    weights = path / WEIGHTS_NAME
    tensors = read_adapter_weights(path)
    if set(tensors) != {TENSOR}:
        other = sorted(set(tensors) - {TENSOR})
        what = f"has {other[0]}" if other else f"has no {TENSOR}"
        raise AdapterLoadError(f"{weights}: {what}; a prefix/prompt adapter holds one tensor, {TENSOR}")
    tensor = tensors[TENSOR]
    if tensor.dtype not in _FLOATS:
        raise AdapterLoadError(f"{weights}: {TENSOR} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                               "it must be floating point: re-save the adapter")
    if tuple(tensor.shape) != want:
        raise AdapterLoadError(f"{weights}: {TENSOR} has shape {tuple(tensor.shape)} but the config and the model "
                               f"need {want}; re-save the adapter or use the base model it was trained for")
    if not bool(torch.isfinite(tensor).all()):
        raise AdapterLoadError(f"{weights}: {TENSOR} holds NaN or infinite values; use an earlier checkpoint")
    return tensor


def virtual_peft_type(path: str | os.PathLike) -> str | None:
    """PREFIX_TUNING or PROMPT_TUNING when folder `path` holds such an adapter, else None (also for a
    missing or unreadable config: the LoRA loader then says what is wrong with it)."""
    try:
        peft_type = read_config_json(path).get("peft_type")
    except AdapterLoadError:
        return None
    peft_type = peft_type.upper() if isinstance(peft_type, str) else None
    return peft_type if peft_type in PEFT_TYPES else None


def read_virtual_adapter(model: torch.nn.Module, path: str | os.PathLike, *, trainable: bool = False
                         ) -> tuple[PrefixTuningConfig | PromptTuningConfig, torch.Tensor, VirtualShape]:
    """``(config, prompt_embeddings, shape)`` of the prefix/prompt folder `path`, every field and the
    tensor checked against `model` (which is not changed). The tensor is (N, layers*2*token_dim) for
    prefix tuning, (N, hidden size) for prompt tuning, as saved."""
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
        check_causal_lm(model)
        if prefix:
            check_prefix_model(model)
        shape = model_shape(model, prefix=prefix)
    except LorakitError as exc:
        raise AdapterLoadError(f"{path}: {exc}") from None
    _check_shape(source, declared, shape)
    n = config.num_virtual_tokens
    tensor = _prompt_tensor(path, (n, shape.num_layers * 2 * shape.token_dim) if prefix else (n, shape.token_dim))
    return config, tensor, shape


def load_virtual_adapter(model: torch.nn.Module, path: str | os.PathLike, name: str = "default", *,
                         trainable: bool = False) -> VirtualAdapter:
    """Load a PEFT prefix- or prompt-tuning folder into causal LM `model`; every field and the tensor
    are checked first, so on any error the model is left as it was. A prefix trained with
    `prefix_projection` loads as its saved output (the MLP is not in the file), so not trainable."""
    config, tensor, _ = read_virtual_adapter(model, path, trainable=trainable)
    try:
        if isinstance(config, PrefixTuningConfig):
            return add_prefix_tuning(model, config, name, weights=tensor, trainable=trainable)
        return add_prompt_tuning(model, config, name, weights=tensor, trainable=trainable)
    except AdapterLoadError:
        raise
    except LorakitError as exc:
        raise AdapterLoadError(f"{path}: {exc}") from None


OTHER_LOADERS.update({peft_type: load_virtual_adapter for peft_type in PEFT_TYPES})
