"""A merged model GGUF from a GGUF base: its metadata and tokenizer kept, the adapted tensors replaced.

Every tensor the adapter does not touch is copied byte for byte (its quantization kept). The
tensors it changes are written in `--outtype` from the merged fp32 weights, in the base tensor's
GGUF row order. They are never re-quantized to the base's 4-bit type by default: rounding W + s*B*A
back to 4 bits would lose most of a small delta (lorakit.merge says the same of QLoRA merges).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from lorakit.errors import LorakitError
from lorakit.export.encode import encode, ggml_type
from lorakit.export.names import GgufTarget
from lorakit.export.write import atomic_gguf

# what GGUFWriter writes itself, or what a copy must not carry over unchanged
_NOT_COPIED = ("GGUF.", "general.architecture", "general.file_type")


def _copy_metadata(reader, writer, name: str | None) -> None:
    import gguf

    for field in reader.fields.values():
        if field.name.startswith(_NOT_COPIED) or (name and field.name == gguf.Keys.General.NAME):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    if name:
        writer.add_name(name)


def write_merged_from_gguf(base_gguf: Path, merged: Mapping[str, torch.Tensor], target: GgufTarget, out: Path,
                           *, outtype: str = "f16", name: str | None = None) -> Path:
    """Write `base_gguf` with the tensors of `merged` (HF parameter name -> merged fp32 weight, in
    PyTorch's [out, in] order) replaced, at `out`, atomically. Returns `out`."""
    import gguf

    ggml_type(outtype)  # a one-line error for an unknown --outtype before any work
    reader = gguf.GGUFReader(str(base_gguf))
    by_gguf: dict[str, str] = {}
    for param in merged:
        gname = target.name(param)
        if gname is None:
            raise LorakitError(f"GGUF export: the merged tensor {param!r} has no tensor in llama.cpp's {target.arch} "
                               f"layout; export a Hugging Face folder with `lorakit merge` instead")
        by_gguf[gname] = param
    present = {t.name for t in reader.tensors}
    missing = sorted(set(by_gguf) - present)
    if missing:
        raise LorakitError(f"{base_gguf}: has no tensor {missing[0]} for the adapter's {by_gguf[missing[0]]!r} "
                           f"(is it the base the adapter was trained on?)")
    with atomic_gguf(out, target.arch) as writer:
        _copy_metadata(reader, writer, name)
        for tensor in reader.tensors:
            param = by_gguf.get(tensor.name)
            if param is None:
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
                continue
            weight = target.rows_to_gguf(param, merged[param].float())
            expected = tuple(int(n) for n in reversed(tensor.shape.tolist()))
            if tuple(weight.shape) != expected:
                raise LorakitError(f"{base_gguf}: tensor {tensor.name} is {list(expected)} but the merged "
                                   f"{param!r} is {list(weight.shape)} (is it the base the adapter was trained on?)")
            data, kind = encode(weight, outtype)
            writer.add_tensor(tensor.name, data, raw_dtype=kind)
    return out
