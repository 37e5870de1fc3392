"""Tensor encodings for GGUF files: the `--outtype` names and how a float tensor is written in each.

The quantizers are the `gguf` package's numpy ones (the reference implementations llama.cpp's
own converter uses), so a file lorakit writes holds the bytes llama.cpp's would. The K-quants have
no quantizer there: they are offered only where a tensor is copied, never re-encoded.
"""

from __future__ import annotations

import numpy as np
import torch

from lorakit.errors import LorakitError

# --outtype name -> gguf.GGMLQuantizationType member name
OUTTYPES: dict[str, str] = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q5_1": "Q5_1",
                            "q5_0": "Q5_0", "q4_1": "Q4_1", "q4_0": "Q4_0"}
ADAPTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # an adapter's small factors: no 4/5-bit


def ggml_type(outtype: str):
    """The `gguf.GGMLQuantizationType` of an --outtype name (one-line error for an unknown one)."""
    import gguf

    if outtype not in OUTTYPES:
        raise LorakitError(f"--outtype {outtype!r} is not one lorakit writes; choose one of {', '.join(OUTTYPES)}")
    return gguf.GGMLQuantizationType[OUTTYPES[outtype]]


def encode(tensor: torch.Tensor, outtype: str):
    """(data, type) for `GGUFWriter.add_tensor(name, data, raw_dtype=type)`.

    tensor: any float dtype, shape as PyTorch holds it (GGUF's ne is that shape reversed). 1-D
    tensors (norms, biases) stay f32, as llama.cpp's converter keeps them; a block quantization
    whose block does not divide the rows falls back to f16, as llama.cpp's does."""
    import gguf

    kind = ggml_type(outtype)
    array = np.ascontiguousarray(tensor.detach().to(torch.float32).cpu().numpy())
    if array.ndim <= 1 or kind == gguf.GGMLQuantizationType.F32:
        return array, gguf.GGMLQuantizationType.F32
    if kind == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), kind
    block = gguf.GGML_QUANT_SIZES[kind][0]
    if array.shape[-1] % block:
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, kind), kind


def decode(data: np.ndarray, kind) -> torch.Tensor:
    """The float32 values of a tensor as a GGUF file holds it (any type `gguf` can de-quantize),
    shape as PyTorch holds it."""
    import gguf

    values = gguf.quants.dequantize(np.asarray(data), kind)
    return torch.from_numpy(np.array(values, dtype=np.float32))  # a copy: the reader's memory map is read-only
