"""QLoRA on tiny models: forward, gradients, PEFT-format save/load, merge from a quantized base."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lorakit.adapters import LoraConfig, add_adapter, adapter_parameters, load_adapter, merge, save_adapter, unmerge
from lorakit.adapters.layers import LoraLinear
from lorakit.errors import LorakitError
from lorakit.merge import merge_to_dense, save_merged
from lorakit.quant import QuantLinear, dequantize_model, quantize_model, quantized_layers
from tests.adapters.helpers import randomize_adapter
from tests.conftest import output_of, tiny_inputs, tiny_model
from tests.quant.helpers import LINEARS

CFG = LoraConfig(r=4, alpha=8)


def qlora_model(arch: str, method: str = "nf4") -> nn.Module:
    model = quantize_model(tiny_model(arch), method)
    add_adapter(model, CFG)
    randomize_adapter(model)
    return model


def dequantized_twin(model: nn.Module) -> nn.Module:
    """A copy whose quantized bases are dense fp32 `nn.Linear`s holding the dequantized weights."""
    return dequantize_model(copy.deepcopy(model))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_qlora_forward_equals_lora_on_the_dequantized_base(arch):
    model = qlora_model(arch)
    assert len(quantized_layers(model)) == LINEARS[arch]  # the head stays dense
    inputs = tiny_inputs(arch)
    # identical math except chunked summation order: fp32 rounding only
    torch.testing.assert_close(output_of(model, inputs), output_of(dequantized_twin(model), inputs),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_qlora_forward_close_to_fp32_lora_within_quantization_error(arch):
    inputs = tiny_inputs(arch)
    ref = tiny_model(arch)
    add_adapter(ref, CFG)
    randomize_adapter(ref)
    expected = output_of(ref, inputs)
    errors = {}
    for method in ("nf4", "int8"):
        model = qlora_model(arch, method)
        weight_err = [_rel(layer.dequantize(), _dense_of(ref, name)) for name, layer in quantized_layers(model)]
        errors[method] = _rel(output_of(model, inputs), expected)
        # First-order perturbation: each of the L quantized layers adds an error of relative size
        # <= max weight error to the residual stream; independent errors add in quadrature.
        assert errors[method] <= math.sqrt(len(weight_err)) * max(weight_err), (method, errors[method])
    assert errors["int8"] < errors["nf4"]  # 255 levels per row beat 16 per block


def _dense_of(ref: nn.Module, quant_name: str) -> torch.Tensor:
    base = ref.get_submodule(quant_name)
    return base.weight if isinstance(base, nn.Linear) else base.weight.T


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradients_reach_only_adapter_weights_and_match_the_dequantized_twin(arch):
    model = qlora_model(arch)
    twin = dequantized_twin(model)
    inputs = tiny_inputs(arch)
    for m in (model, twin):
        m.train()
        m(**inputs, labels=inputs["input_ids"]).loss.backward()
    adapter_ids = {id(p) for p in adapter_parameters(model, "default")}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if id(p) in adapter_ids}
    assert all(b.grad is None for b in model.buffers())
    twin_params = dict(twin.named_parameters())
    for name in with_grad:  # LoRA A/B have the same names in both models
        torch.testing.assert_close(model.get_parameter(name).grad, twin_params[name].grad, atol=1e-5, rtol=1e-4)


def test_qlora_adapter_saves_in_peft_format_and_loads_on_fp32_base(tmp_path):
    from peft import PeftModel  # the oracle: PEFT reads the files on a plain fp32 model

    model = qlora_model("qwen2")
    save_adapter(model, tmp_path / "a")
    twin = dequantized_twin(model)
    expected = output_of(twin, tiny_inputs("qwen2"))

    base = dequantize_model(quantize_model(tiny_model("qwen2"), "nf4"))  # fp32 model, dequantized weights
    load_adapter(base, tmp_path / "a", "default")
    torch.testing.assert_close(output_of(base, tiny_inputs("qwen2")), expected, atol=1e-5, rtol=1e-5)

    peft_base = dequantize_model(quantize_model(tiny_model("qwen2"), "nf4"))
    peft = PeftModel.from_pretrained(peft_base, tmp_path / "a")
    torch.testing.assert_close(output_of(peft, tiny_inputs("qwen2")), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_from_quantized_base_is_dequantized_base_plus_delta(dtype):
    model = qlora_model("llama")
    inputs = tiny_inputs("llama")
    before = output_of(model, inputs)
    expected = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLinear):
            expected[name] = (layer.base_layer.dequantize() + layer.delta_weight("default")).to(dtype)
    merged = merge_to_dense(model, dtype)
    assert not quantized_layers(merged)
    for name, weight in expected.items():
        module = merged.get_submodule(name)
        assert type(module) is nn.Linear and module.weight.dtype == dtype
        assert torch.equal(module.weight, weight), name  # computed in fp32, cast once
    if dtype == torch.float32:
        torch.testing.assert_close(output_of(merged, inputs), before, atol=1e-5, rtol=1e-5)


def test_unmerge_restores_the_quantized_module_itself():
    model = qlora_model("llama")
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    quantized = layer.base_layer
    before = output_of(model, tiny_inputs("llama"))
    merge(model)
    assert type(layer.base_layer) is nn.Linear
    torch.testing.assert_close(output_of(model, tiny_inputs("llama")), before, atol=1e-5, rtol=1e-5)
    unmerge(model)
    assert layer.base_layer is quantized and not layer.merged
    assert "_quantized_base" not in layer.__dict__


def test_save_merged_writes_a_model_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    model = qlora_model("qwen2")
    before = output_of(model, tiny_inputs("qwen2"))
    save_merged(model, tmp_path / "merged", torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    torch.testing.assert_close(output_of(loaded, tiny_inputs("qwen2")), before, atol=1e-5, rtol=1e-5)


def test_quantize_refuses_a_model_with_adapters_and_unknown_methods():
    model = tiny_model("llama")
    with pytest.raises(LorakitError, match="unknown quantization method 'nf3'"):
        quantize_model(model, "nf3")
    add_adapter(model, CFG)
    with pytest.raises(LorakitError, match="before add_adapter"):
        quantize_model(model, "nf4")
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
