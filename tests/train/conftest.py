"""A tiny llama with SmolLM2's tokenizer, and small random datasets in `lorakit data` format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def save_tiny_llama(out: Path) -> Path:
    """A random 2-layer llama (seed 0) with SmolLM2's tokenizer, saved to `out`."""
    import transformers as tf

    from lorakit.models import load_tokenizer

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    tf.LlamaForCausalLM(cfg).save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


def write_dataset(root: Path, n_train: int = 48, n_valid: int = 12, seed: int = 0, max_len: int = 60,
                  min_len: int = 8) -> Path:
    """train/valid JSONL with random token ids (`min_len` to `max_len` of them) and prompt lengths (the
    trainer's input schema)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid)):
        with (root / f"{split}.jsonl").open("w") as fh:
            for _ in range(n):
                length = rng.randint(min_len, max_len)
                ids = [rng.randint(3, 300) for _ in range(length)]
                fh.write(json.dumps({"input_ids": ids, "prompt_len": rng.randint(0, 5)}) + "\n")
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")
