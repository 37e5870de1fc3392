"""Load a causal LM with quantized linears without ever holding its fp32 weights.

The model is built with every parameter on the meta device (buffers such as rotary
frequencies are small and built normally). Then each linear layer's weight is read from the
safetensors files, quantized, and released before the next one is read; other tensors
(embeddings, norms, the output head) are read as they are and kept in fp32. Each tensor is read
from the file mapping and released after use (quantized linears) or kept file-backed (the rest): peak
memory is the quantized model plus the largest single tensor.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lorakit.errors import LorakitError
from lorakit.models import _quiet_transformers, load_tokenizer, resolve_model
from lorakit.runtime.memory import release_free_heap
from lorakit.quant.model import METHODS, output_head_names, quant_class, quantizable_linears, replace_module

QUANTIZE_CHOICES = ("none", *METHODS)  # values of --quantize on generate, serve and merge


@contextmanager
def parameters_on_meta():
    """Inside the block, new module parameters are created on the meta device (no memory)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def tensor_files(model_dir: Path) -> dict[str, Path]:
    """``{tensor key: safetensors file}`` of a Hugging Face model directory (sharded or not)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / f for k, f in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise LorakitError(f"{model_dir} has no model.safetensors or model.safetensors.index.json; "
                           "lorakit loads safetensors weights only (convert .bin checkpoints first)")
    with safe_open(str(single), framework="pt") as f:
        return {k: single for k in f.keys()}


def read_tensor(files: dict[str, Path], key: str) -> torch.Tensor:
    """One tensor from its file. It is a view of the file mapping, so its pages are read on first use
    and given back when the tensor is released (it keeps the mapping alive after the file closes)."""
    path = files.get(key)
    if path is None:
        raise LorakitError(f"tensor '{key}' is missing from the safetensors files of {next(iter(files.values())).parent}")
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)  # backed by the file mapping until copied or released


def _assign(model: nn.Module, key: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = module._parameters.get(attr)
    if old is None:
        raise LorakitError(f"checkpoint tensor '{key}' has no matching parameter in {type(model).__name__}")
    if tuple(old.shape) != tuple(tensor.shape):
        raise LorakitError(f"checkpoint tensor '{key}' has shape {tuple(tensor.shape)}, the model expects {tuple(old.shape)}")
    module._parameters[attr] = nn.Parameter(tensor.to(dtype), requires_grad=False)




def build_on_meta(config) -> nn.Module:
    """An `AutoModelForCausalLM` of `config` whose parameters are all on the meta device."""
    from transformers import AutoModelForCausalLM

    try:
        with parameters_on_meta():
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError as exc:
        raise LorakitError(f"model_type {config.model_type!r} is not a causal LM transformers can build "
                           f"({str(exc).splitlines()[0][:120]}); lorakit plans and quantizes causal LMs") from exc


def load_quantized(spec: str | os.PathLike | None = None, method: str = "nf4", *, skip: list[str] | None = None,
                   dtype: torch.dtype = torch.float32, with_tokenizer: bool = False,
                   device: str | torch.device = "cpu", head: str | None = None):
    """Load model `spec` (alias, .gguf or HF directory) with `method`-quantized linears.

    Returns ``(model, tokenizer or None)``; non-linear weights are kept in `dtype` (fp32 for CPU
    compute). The output head stays dense, unless `head` names a method for it and it is not tied
    to the input embedding (a tied head is the embedding's table: quantizing it would add a copy).
    The model is built on the CPU, then moved to `device`.
    """
    from transformers import AutoConfig, GenerationConfig

    _quiet_transformers()
    for name in (method, head or method):  # an unknown method fails before any loading
        quant_class(name)
    path = resolve_model(spec)
    files = tensor_files(path)
    model = build_on_meta(AutoConfig.from_pretrained(str(path)))
    layers = quantizable_linears(model, skip)
    heads = sorted(output_head_names(model))
    if head is not None and len(heads) == 1:
        module = model.get_submodule(heads[0])
        if module.weight is not model.get_input_embeddings().weight:  # a tied head is the embedding's table
            layers.append((heads[0], module))
    for name, module in layers:
        cls = quant_class(head if name in heads else method)
        weight = read_tensor(files, f"{name}.weight")
        if not isinstance(module, nn.Linear):  # GPT-2's Conv1D stores (in, out)
            weight = weight.T
        bias = read_tensor(files, f"{name}.bias") if module.bias is not None else None
        replace_module(model, name, cls.from_weight(weight, bias))
        del weight, bias
        release_free_heap()
    for key, param in list(model.named_parameters()):
        if param.device.type == "meta" and key in files:
            _assign(model, key, read_tensor(files, key), dtype)
    model.tie_weights()
    missing = [k for k, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise LorakitError(f"{path}: no tensor for parameter '{missing[0]}' (and {len(missing) - 1} more) in its "
                           "safetensors files; is the checkpoint for this config.json?")
    if (path / "generation_config.json").is_file():  # from_pretrained reads it too (EOS ids, defaults)
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    if torch.device(device).type != "cpu":
        model.to(device)
    model.eval()
    return model, (load_tokenizer(path) if with_tokenizer else None)


def parse_quantize(value: str | None) -> str | None:
    """``--quantize`` value -> quantization method, or None for a dense fp32 base ('none' or not given)."""
    if value is None or value == "none":
        return None
    if value not in METHODS:
        raise LorakitError(f"--quantize {value!r}: use one of {', '.join(QUANTIZE_CHOICES)}")
    return value


def load_base_model(spec: str | os.PathLike | None = None, quantize: str | None = None, *,
                    with_tokenizer: bool = True, device: str | torch.device = "cpu", head: str | None = None):
    """The base model of `lorakit generate`, `serve` and `merge`: ``(model, tokenizer or None)``.

    `quantize` None or 'none': the dense fp32 model (`lorakit.models.load_model`). 'nf4' or 'int8':
    the model is built on the meta device and each linear is quantized as it is read from the
    safetensors files (`load_quantized`), so the full fp32 model never exists in memory; embeddings,
    norms and the output head stay fp32, and every forward computes in fp32. Adapters attach to
    either with `load_adapter` (LoRA layers wrap the quantized linears). `head`: see `load_quantized`.
    """
    method = parse_quantize(quantize)  # a bad value fails before any loading
    if method is None:
        from lorakit.models import load_model

        return load_model(spec, dtype=torch.float32, device=device, with_tokenizer=with_tokenizer)
    return load_quantized(spec, method, with_tokenizer=with_tokenizer, device=device, head=head)
