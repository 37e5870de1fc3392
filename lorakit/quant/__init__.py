"""Quantized frozen bases for QLoRA: NF4 (QLoRA paper) and int8 weight-only linears.

Typical use::

    from lorakit.quant import load_quantized
    from lorakit.merge import save_merged
    model, tok = load_quantized("smollm2-135m-instruct", "nf4", with_tokenizer=True)
    add_adapter(model, LoraConfig(r=16, target_modules="all-linear"))   # LoRA A/B stay fp32
    ...train...
    save_merged(model, "out/merged", dtype=torch.bfloat16)              # dequantize + delta, then cast
"""

from lorakit.quant.linear import Int8Linear, NF4Linear, QuantLinear
from lorakit.quant.load import QUANTIZE_CHOICES, load_base_model, load_quantized, parse_quantize
from lorakit.quant.model import METHODS, dequantize_model, quantize_model, quantized_layers
from lorakit.quant.nf4 import NF4_CODE, dequantize_nf4, quantize_nf4

__all__ = [
    "METHODS", "NF4_CODE", "QUANTIZE_CHOICES", "Int8Linear", "NF4Linear", "QuantLinear", "dequantize_model",
    "dequantize_nf4", "load_base_model", "load_quantized", "parse_quantize", "quantize_model",
    "quantize_nf4", "quantized_layers",
]
