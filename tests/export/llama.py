"""Running GGUF files in llama.cpp (llama-cpp-python) from the tests, and the rounding bound the
comparisons with lorakit use."""

from __future__ import annotations

import numpy as np
import torch

from tests.needs import unavailable

STEPS = 32  # greedy steps compared


def import_llama_cpp():
    """The llama_cpp module, or a skip (locally) / failure (CI) naming `make llama-cpp`."""
    try:
        import llama_cpp
    except ImportError:
        unavailable("llama-cpp-python is not installed", "make llama-cpp")
    return llama_cpp


def llama(llama_cpp, path, lora=None, n_ctx: int = 128):
    """A llama.cpp model of the file at `path` (+ an adapter GGUF), all logits kept, f32 KV cache."""
    kw = {"lora_path": str(lora)} if lora else {}
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_threads=2, verbose=False,
                           type_k=0, type_v=0, **kw)  # 0: GGML_TYPE_F32


def llama_logits(llm, ids: list[int]) -> torch.Tensor:
    """llama.cpp's logits at every position of `ids`. [len(ids), vocab]"""
    llm.reset()
    llm.eval(ids)
    return torch.tensor(np.array(llm.scores[: len(ids)]))


def llama_greedy(llm, ids: list[int], steps: int = STEPS) -> list[int]:
    """llama.cpp's greedy continuation of `ids` (stops at its eos)."""
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(t)
        if len(out) == steps or t == llm.token_eos():
            return out
    return out


def lorakit_greedy(model, ids: torch.Tensor, eos: int | None, steps: int = STEPS) -> list[int]:
    """lorakit's (transformers') greedy continuation of `ids` [1, T]."""
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)[0, ids.shape[1]:]
    return out.tolist()


def rounding_bound(effect: float, config) -> float:
    """Worst-case f32 rounding of a contribution of size `effect` to the logits: effect * n * eps per
    layer over the layers, n the longest sum, eps = 2^-24 (the standard bound for a dot product:
    Higham, Accuracy and Stability of Numerical Algorithms, sec. 3.1)."""
    n = max(config.hidden_size, config.intermediate_size)
    return effect * n * 2.0**-24 * config.num_hidden_layers


class _Fp16TableGelu(torch.nn.Module):
    """GELU (tanh form) as ggml's CPU backend computes it: the input rounded to f16, the result read
    from a table of f16 values (ggml-cpu/vec.h defines GGML_GELU_FP16 unconditionally)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.gelu(x.half().float(), approximate="tanh")
        return y.half().to(x.dtype)


def with_ggml_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with each tanh-GELU module replaced by ggml's f16-table GELU, in place: what llama.cpp
    computes for Gemma's MLPs on a CPU, so that what is left between the two is f32 rounding."""
    from transformers.activations import GELUTanh

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, GELUTanh):
                setattr(parent, name, _Fp16TableGelu())
    return model
