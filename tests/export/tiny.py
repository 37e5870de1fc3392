"""Tiny random-weight causal LMs saved as Hugging Face folders with a real tokenizer, for the GGUF
export tests (llama.cpp needs a tokenizer in the file; lorakit's CLI takes the folder as --model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

ARCHS = ("llama", "llama3-rope", "qwen2", "gemma3")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def tiny_config(arch: str, vocab: int):
    """The transformers config of the tiny model `arch` (one of ARCHS) with `vocab` tokens."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "llama3-rope":  # long wavelengths divided, short kept, those between interpolated
        rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        return tf.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=False)
    # a window shorter than prompt + continuation, so the sliding layers' mask matters
    return tf.Gemma3TextConfig(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                               layer_types=["sliding_attention", "full_attention"])


def tokenizer_dir(arch: str) -> Path:
    """A folder with the real tokenizer the tiny model `arch` uses: Gemma's for gemma3, SmolLM2's
    (byte-level BPE) otherwise."""
    from lorakit.models import resolve_model

    return resolve_model("gemma3-270m" if arch == "gemma3" else "smollm2-135m-instruct")


def tiny_folder_of(arch: str, folder: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """Save a tiny random model `arch` with its tokenizer at `folder`; returns (folder, model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tokenizer_dir(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(AutoTokenizer.from_pretrained(str(source)))))
    with torch.no_grad():
        for p in model.parameters():  # norms off 1, biases off 0: every tensor matters to a comparison
            p.add_(torch.randn_like(p) * 0.05)
        model.get_input_embeddings().weight.mul_(20.0)  # logits of a few units, not a near tie everywhere
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder, model.eval()
