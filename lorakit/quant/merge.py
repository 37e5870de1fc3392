"""Merge adapters trained on a quantized base into a dense model, and save it.

The merged weight is ``dequantize(W_q) + s * B A`` computed in fp32, then cast once to the
requested dtype. It is never re-quantized: adding a small delta to NF4 weights and quantizing
again would round most of the delta away. Linears without an adapter are dequantized too, so the
result is an ordinary transformers model any tool can load.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lorakit.atomic import atomic_dir
from lorakit.adapters.model import merge_and_unload
from lorakit.quant.model import dequantize_model


def merge_to_dense(model: nn.Module, dtype: torch.dtype = torch.float32, names: list[str] | None = None) -> nn.Module:
    """Fold the active (or given) adapters into dequantized base weights; returns a dense `dtype` model.

    Changes `model` in place (its adapters are removed) and returns it.
    """
    merge_and_unload(model, names)
    dequantize_model(model, torch.float32)
    return model.to(dtype)


def save_merged(model: nn.Module, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                tokenizer=None) -> Path:
    """`merge_to_dense` then write a Hugging Face directory (safetensors) atomically to `out_dir`."""
    out = Path(out_dir)
    merge_to_dense(model, dtype)
    if getattr(model, "config", None) is not None:
        model.config.dtype = dtype
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out
