"""`lorakit merge`: fold an adapter into its base and write a plain transformers model directory.

The result loads with ``AutoModelForCausalLM.from_pretrained`` alone (no lorakit, no PEFT)
and runs at the base model's speed. The merge is computed in fp32 (the adapter's update is
small next to the weights: merging in bf16 would round much of it away) and the weights are
cast to the requested dtype only when saved. The directory appears atomically: a crash leaves
no half-written model.

An adapter trained with QLoRA learned its update against the *quantized* base, not the fp32
one. With ``quantize="nf4"`` (or "int8") the base is loaded quantized as in training, and the
merged weight is ``dequantize(W_q) + s * B A`` in fp32 (`merge_to_dense`), cast
once to `dtype`; linears without an adapter are dequantized too, and nothing is re-quantized
(rounding the sum back to 4 bits would lose most of the delta). The result is a plain dense
model whose outputs equal the QLoRA model's (PEFT issues #2321, #2501). Without `quantize` the
adapter is added to the fp32 weights, which differ from what a QLoRA adapter was trained on by
the quantization error.

Prefix- and prompt-tuning adapters (PEFT's PREFIX_TUNING / PROMPT_TUNING) are refused: they change
no weight, they add trained virtual tokens to every input, so there is nothing to fold in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lorakit.adapters import load_adapter, merge_and_unload, read_adapter_config
from lorakit.adapters.io import read_config_json
from lorakit.adapters.prompt_io import PEFT_TYPES as VIRTUAL_PEFT_TYPES
from lorakit.atomic import atomic_dir
from lorakit.errors import LorakitError
from lorakit.outputs import check_output, check_replace, model_path
from lorakit.quant.model import dequantize_model

# written into every merged model: `--force` replaces a directory only when it holds this file
MARKER = "lorakit_merge.json"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch dtype among them) -> torch dtype."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise LorakitError(f"--dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def recorded_base(adapter_dir: str | os.PathLike) -> str | None:
    """The base model named in the adapter's adapter_config.json, if any."""
    try:
        data = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not base:
        return None
    revision = data.get("revision")  # a Hub base saved at a revision: load that one
    return f"{base}@{revision}" if isinstance(revision, str) and revision and "@" not in str(base) else str(base)


def refuse_virtual(adapter_dir: Path) -> None:
    """Refuse, in one line, a prefix/prompt adapter: it has no weight delta to merge."""
    peft_type = read_config_json(adapter_dir).get("peft_type")
    if peft_type in VIRTUAL_PEFT_TYPES:
        what = "prefix tuning" if peft_type == "PREFIX_TUNING" else "prompt tuning"
        raise LorakitError(f"{adapter_dir / 'adapter_config.json'}: a {peft_type} ({what}) adapter cannot be merged: "
                           "it changes no weight, it adds trained virtual tokens to every input; generate with the "
                           "adapter loaded instead (PEFT's PeftModel.from_pretrained, or lorakit.adapters.load_adapter "
                           "and model.generate); nothing was written")


def _not_merged(folder: Path) -> list[str]:
    """Everything in `folder` unless lorakit merged a model there (its marker file is present)."""
    return [] if (folder / MARKER).is_file() else sorted(p.name for p in folder.iterdir())


def check_out_dir(out: Path, adapter_dir: Path, force: bool, base: str | os.PathLike | None = None) -> None:
    """Never write into or around the adapter, the base model or a model cache; replace an existing
    `out` only with `force` and only when it is a model lorakit merged."""
    check_output(out, [("the adapter being merged (--adapter)", adapter_dir),
                       ("the base model (--model)", model_path(base))])
    check_replace(out, force, "--force", _not_merged)


def merge_to_dense(model: torch.nn.Module, dtype: torch.dtype = torch.float32,
                   names: list[str] | None = None) -> torch.nn.Module:
    """Fold the active (or given) adapters into the base weights, dequantizing a quantized base:
    ``dequantize(W_q) + s * B A`` in fp32, then one cast to `dtype`. Never re-quantized: rounding
    the sum back to 4 bits would lose most of the delta. Changes `model` in place and returns it."""
    merge_and_unload(model, names)
    dequantize_model(model, torch.float32)
    return model.to(dtype)


def save_merged(model: torch.nn.Module, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                tokenizer=None) -> Path:
    """`merge_to_dense` then write a Hugging Face directory (safetensors) atomically to `out_dir`."""
    merge_to_dense(model, dtype)
    if getattr(model, "config", None) is not None:
        model.config.dtype = dtype
    return save_model_dir(model, tokenizer, Path(out_dir))


def save_model_dir(model, tokenizer, out: Path, extra: dict | None = None) -> Path:
    """save_pretrained into a temp dir next to `out`, then swap it in (replacing any old `out`).

    The marker file (`extra`, or {}) says lorakit wrote it, so a later `merge --force` may replace it.
    """
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(extra or {}, indent=1) + "\n")
    return out


def merge_to_dir(model_spec: str | os.PathLike | None, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 dtype: str | torch.dtype = "float32", *, force: bool = False, quantize: str | None = None) -> Path:
    """Merge the adapter in `adapter_dir` into `model_spec` and write a model directory at `out_dir`.

    `model_spec` None means the base recorded in the adapter (else the default model). `quantize`
    ('nf4' | 'int8'; None or 'none': fp32) is how the base was quantized when the adapter was trained:
    the merge then adds the delta to the dequantized weights (see the module docstring).
    Refuses an adapter made for another base before any work; returns the output path.
    """
    from lorakit.quant.load import load_base_model, parse_quantize

    target_dtype = parse_dtype(dtype)
    method = parse_quantize(quantize)
    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    refuse_virtual(adapter_dir)  # before anything is read, loaded or written
    config = read_adapter_config(adapter_dir)  # a one-line error naming the file, before loading a model
    spec = model_spec or recorded_base(adapter_dir)
    check_out_dir(out, adapter_dir, force, spec)
    model, tokenizer = load_base_model(spec, method)
    load_adapter(model, adapter_dir, "default")
    if method is None:
        model = merge_and_unload(model).to(target_dtype)
    else:  # dequantize(W_q) + delta in fp32, unadapted linears dequantized too, then one cast
        model = merge_to_dense(model, target_dtype)
    model.config.dtype = target_dtype
    info = {"base": str(spec or "smollm2-135m-instruct"), "base_quantization": method or "none",
            "adapter": str(adapter_dir.resolve()),
            "dtype": str(target_dtype).removeprefix("torch."), "rank": config.r, "dora": config.use_dora,
            "rslora": config.use_rslora, "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False))}
    return save_model_dir(model, tokenizer, out, info)
