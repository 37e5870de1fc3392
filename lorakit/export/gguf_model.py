"""A whole model GGUF from a Hugging Face causal LM's (merged) state dict, for llama.cpp and Ollama.

Written as llama.cpp's loaders read it (src/models/{llama,qwen2,gemma3}.cpp): the architecture's
hyper-parameter keys, the tokenizer (`lorakit.export.gguf_vocab`), and every tensor under its GGUF
name in `--outtype` (1-D norms and biases f32). The tensor changes llama.cpp's converter makes are
made here too: q/k rows in llama.cpp's rotary order for the llama family (`GgufTarget.rows_to_gguf`),
Gemma's norm weights stored as ``1 + w`` (transformers' Gemma3RMSNorm multiplies by ``1 + w``,
llama.cpp's RMS norm by the stored weight), no output tensor when the embeddings are tied (llama.cpp
reuses token_embd), and Llama 3's rope scaling as a ``rope_freqs`` tensor of per-frequency divisors.

What llama.cpp would compute differently is refused before anything is written, in one line: other
families, rope scalings it has no key for, and for Gemma 3 an attention scale other than the one
its loader derives (1/sqrt(head_dim); 1/sqrt(hidden/heads) for the 62-layer model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import gguf
import torch

from lorakit.errors import LorakitError
from lorakit.export.encode import OUTTYPES, encode, ggml_type
from lorakit.export.gguf_vocab import add_vocab, read_vocab
from lorakit.export.names import GgufTarget, gguf_target
from lorakit.export.write import atomic_gguf

# The llama.cpp loaders this module writes for (which family goes to which: lorakit.families,
# gguf_arch and gguf_whole), and the MLP activation each one's graph computes.
LLAMA, QWEN2, GEMMA3 = (gguf.MODEL_ARCH_NAMES[a] for a in (gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.QWEN2,
                                                            gguf.MODEL_ARCH.GEMMA3))
_ACTIVATION = {LLAMA: "silu", QWEN2: "silu", GEMMA3: "gelu_pytorch_tanh"}
_BUFFERS = ("rotary_emb.inv_freq",)  # non-weights a state dict may carry


def _refuse(config, what: str) -> LorakitError:
    return LorakitError(f"GGUF export: {what} (model_type '{config.model_type}'); export a merged Hugging Face "
                        "folder with `lorakit merge` and convert it with llama.cpp's convert_hf_to_gguf.py")


def _rope(config, layer_type: str | None = None) -> dict:
    """The rope parameters of `config` (of one layer type where they are per type, as Gemma 3's)."""
    params = getattr(config, "rope_parameters", None)
    if params is None:  # a config from before transformers 5
        params = {"rope_theta": getattr(config, "rope_theta", 10000.0), **(getattr(config, "rope_scaling", None) or {})}
        if layer_type == "sliding_attention":
            params = {"rope_theta": getattr(config, "rope_local_base_freq", 10000.0)}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return dict(params)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _llama3_factors(rope: dict, head_dim: int) -> torch.Tensor:
    """Llama 3's rope scaling as llama.cpp's rope_freqs: per frequency, what its angle is divided by.
    Short wavelengths are kept, long ones divided by `factor`, those between interpolated. [head_dim/2]"""
    inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    context = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    smooth = ((context / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    return divisor.float()


def _check(config, arch: str) -> None:
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act != _ACTIVATION[arch]:
        raise _refuse(config, f"llama.cpp's {arch} runs {_ACTIVATION[arch]}, this model {act}")
    if arch == LLAMA and getattr(config, "sliding_window", None):
        raise _refuse(config, "llama.cpp's llama has no sliding-window attention")
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = _head_dim(config)
    if arch == QWEN2 and (head_dim * heads != hidden or getattr(config, "use_sliding_window", False)):
        raise _refuse(config, "llama.cpp's qwen2 has heads*head_dim = hidden and no sliding window")
    if arch == GEMMA3:
        want = hidden / heads if config.num_hidden_layers == 62 else head_dim
        if config.query_pre_attn_scalar != want or getattr(config, "attn_logit_softcapping", None) \
                or getattr(config, "use_bidirectional_attention", False):
            raise _refuse(config, f"llama.cpp's gemma3 scales attention by 1/sqrt({want:g}), causally, without "
                                  "attention softcapping")
        if _rope(config, "sliding_attention").get("rope_type", "default") != "default":
            raise _refuse(config, "llama.cpp's gemma3 has no rope scaling for its sliding-window layers")
    kind = _rope(config, "full_attention" if arch == GEMMA3 else None).get("rope_type", "default")
    if kind not in ("default", "linear") and not (kind == "llama3" and arch == LLAMA):
        raise _refuse(config, f"rope type '{kind}' is not one lorakit writes (default, linear; llama3 for llama)")


def _add_hparams(writer, config, arch: str, outtype: str) -> None:
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = _head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope(config, "full_attention" if arch == GEMMA3 else None)  # Gemma 3: its global layers
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if arch == LLAMA:
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    if arch == GEMMA3:
        writer.add_rope_freq_base_swa(_rope(config, "sliding_attention")["rope_theta"])
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        if config.sliding_window:
            writer.add_sliding_window(config.sliding_window)
            swa = [t == "sliding_attention" for t in config.layer_types]
            if swa != [i % 6 < 5 for i in range(len(swa))]:  # llama.cpp's default: every 6th layer global
                writer.add_sliding_window_pattern(swa)
    file_type = "ALL_F32" if outtype == "f32" else f"MOSTLY_{OUTTYPES[outtype]}"
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _gguf_tensors(tensors: Mapping[str, torch.Tensor], target: GgufTarget, config) -> dict[str, torch.Tensor]:
    """GGUF name -> fp32 tensor in llama.cpp's layout (PyTorch's shape), checked before any write."""
    T = gguf.MODEL_TENSOR
    norms = {T.ATTN_NORM, T.ATTN_POST_NORM, T.FFN_NORM, T.FFN_PRE_NORM, T.FFN_POST_NORM, T.ATTN_Q_NORM,
             T.ATTN_K_NORM, T.OUTPUT_NORM}
    embed, head = tensors.get("model.embed_tokens.weight"), tensors.get("lm_head.weight")
    if embed is None:
        raise _refuse(config, "the state dict has no model.embed_tokens.weight")
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if head is None and not tied:
        raise _refuse(config, "untied embeddings but the state dict has no lm_head.weight")
    out: dict[str, torch.Tensor] = {}
    for param, value in tensors.items():
        if param.endswith(_BUFFERS):
            continue
        if param == "lm_head.weight" and tied and (value is embed or torch.equal(value, embed)):
            continue  # llama.cpp uses token_embd as the output when there is no output tensor
        name = target.name(param)
        if name is None or name in out:
            raise _refuse(config, f"the tensor '{param}' has {'no' if name is None else 'a second'} tensor in "
                                  f"llama.cpp's {target.arch} layout")
        value = target.rows_to_gguf(param, value.detach().float())
        if target.arch == GEMMA3 and target.kind(param) in norms:
            value = value + 1.0
        out[name] = value
    if target.arch == LLAMA and _rope(config).get("rope_type") == "llama3":
        out[gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight"] = _llama3_factors(_rope(config), _head_dim(config))
    return out


def write_model_gguf(out: Path, tensors: Mapping[str, torch.Tensor], config, tokenizer_dir: Path, *,
                     outtype: str = "f16", name: str | None = None) -> Path:
    """Write a llama.cpp model GGUF at `out` (atomically: an error leaves no file there); returns `out`.

    tensors: HF parameter name -> weight as PyTorch holds it (``model.layers.0.self_attn.q_proj.weight``
    [out, in], ...), merged; config: the model's transformers config; tokenizer_dir: the folder with
    its tokenizer.json. Families: llama, qwen2, gemma3 (Gemma3ForCausalLM); others are refused."""
    from lorakit.families import FAMILIES, family_for

    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    ggml_type(outtype)  # a one-line error for an unknown --outtype before any work
    family = family_for(config)
    if not family.gguf_whole:
        whole = ", ".join(f.name for f in FAMILIES if f.gguf_whole)
        raise LorakitError(f"GGUF export from a Hugging Face model: model_type '{config.model_type}' is not supported "
                           f"(families: {whole}); export a merged folder with `lorakit merge` instead")
    _check(config, family.gguf_arch)
    target = gguf_target(config)
    fallback = {k: getattr(config, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    fallback = {k: v[0] if isinstance(v, list) else v for k, v in fallback.items()}
    vocab = read_vocab(tokenizer_dir, config.vocab_size, fallback)
    ready = _gguf_tensors(tensors, target, config)
    rows = ready["token_embd.weight"].shape[0]
    if rows != len(vocab.tokens):
        raise _refuse(config, f"the embedding has {rows} rows but config.vocab_size is {len(vocab.tokens)}")
    with atomic_gguf(out, target.arch) as writer:
        writer.add_type("model")
        writer.add_name(name or Path(getattr(config, "_name_or_path", "") or tokenizer_dir).name or target.arch)
        _add_hparams(writer, config, target.arch, outtype)
        add_vocab(writer, vocab)
        for gguf_name, value in ready.items():
            data, kind = encode(value, outtype)
            writer.add_tensor(gguf_name, data, raw_dtype=kind)
    return out
