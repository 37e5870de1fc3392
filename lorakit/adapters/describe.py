"""What an adapter folder holds, in a few lines for `lorakit inspect --adapter`: its kind, its shape
and its parameter count, read from the files alone (no model is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from lorakit.adapters.io import read_adapter_config, read_adapter_weights, read_config_json
from lorakit.adapters.prefix import PrefixTuningConfig
from lorakit.adapters.prompt_io import PEFT_TYPES, TENSOR, read_virtual_config
from lorakit.adapters.virtual import VirtualAdapter
from lorakit.errors import AdapterLoadError

NO_MERGE = "merge: not possible (no weight delta: the virtual tokens are extra inputs)"


def describe_adapter(path: str | os.PathLike) -> list[str]:
    """Lines describing the adapter folder `path` (LoRA/DoRA, prefix or prompt tuning); a folder
    that is not an adapter lorakit reads is refused in one line naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"{path}: adapter directory not found")
    data = read_config_json(path)
    if data.get("peft_type") in PEFT_TYPES:
        return _virtual_lines(path, data)
    config = read_adapter_config(path)
    tensors = read_adapter_weights(path)
    kind = "DoRA" if config.use_dora else "LoRA"
    targets = config.target_modules if isinstance(config.target_modules, str) else ", ".join(config.target_modules)
    return [f"adapter: {path} ({kind}{' rsLoRA' if config.use_rslora else ''}, task {data.get('task_type')}, "
            f"base {data.get('base_model_name_or_path')})",
            f"r={config.r} alpha={config.alpha} scaling={config.scaling:.4g}, targets: {targets}",
            f"parameters: {sum(t.numel() for t in tensors.values()):,} in {len(tensors)} tensors"]


def _virtual_lines(path: Path, data: dict) -> list[str]:
    config, declared = read_virtual_config(path)
    tensor = read_adapter_weights(path).get(TENSOR)
    if tensor is None or tensor.dim() != 2:
        raise AdapterLoadError(f"{path / 'adapter_model.safetensors'}: no 2D {TENSOR}; a prefix/prompt adapter "
                               "holds one tensor of that name: re-save the adapter")
    n, width = tensor.shape
    head = (f"adapter: {path} ({config.peft_type}, task {data.get('task_type')}, "
            f"base {data.get('base_model_name_or_path')})")
    layers, dim, heads = declared["num_layers"], declared["token_dim"], declared["num_attention_heads"]
    if isinstance(config, PrefixTuningConfig):
        layers = layers or (width // (2 * dim) if dim else None)
        where = (f"{n} virtual tokens: key/value pairs in each of {layers or '?'} layers"
                 f" ({heads or '?'} KV heads x {dim // heads if dim and heads else '?'})")
        if config.prefix_projection:
            where += ("; trained through an MLP, of which the file holds the output only (loads for inference, "
                      "cannot train on)")
    else:
        init = config.init + (f" {config.init_text!r}" if config.init == "text" else "")
        where = f"{n} virtual tokens: embeddings of width {width} before the input (init {init}); no layer changed"
    return [head, where, f"parameters: {tensor.numel():,} ({TENSOR}, {n} x {width})", NO_MERGE]


def virtual_summary(record: VirtualAdapter, model: nn.Module) -> list[str]:
    """What the virtual-token adapter attached to `model` trains, for `lorakit inspect --method prefix|prompt`."""
    shape, n = record.shape, record.num_virtual_tokens
    if record.peft_type == "PREFIX_TUNING":
        what = (f"prefix tuning, {n} virtual tokens: key/value pairs in each of {shape.num_layers} layers "
                f"({shape.num_attention_heads} KV heads x {shape.head_dim})")
        if record.config.prefix_projection:
            what += f", trained through a tanh MLP of width {record.config.encoder_hidden_size or shape.token_dim}"
    else:
        what = f"prompt tuning, {n} virtual tokens: embeddings of width {shape.token_dim} before the input"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return [f"adapter: {what}",
            f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}",
            NO_MERGE]
