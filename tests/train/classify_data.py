"""Tiny classifiers' folders and a synthetic, easily separable classification dataset.

The tokenizer is word-level over ids below the tiny models' 96; the BERT one wraps a text in
``[CLS] ... [SEP]`` as BERT's does, the llama one adds nothing. Both share ids, so one dataset
prepared with either serves both models. Each class has words of its own beside a few common
ones, so the classes are separable from any of those words.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from tests.conftest import tiny_model

CLASSES = ("alpha", "beta", "gamma")
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
COMMON = ("the", "and", "of", "a", "to", "in", "was", ".")  # English enough for prepare's prose filters
# each class's own 25 words (letters only, made up): "zora" .. "zory" for alpha, and so on
WORDS = tuple(tuple(f"{stem}{chr(97 + i)}" for i in range(25)) for stem in ("zor", "quin", "blep"))
VOCAB = {**SPECIAL, **{w: 4 + i for i, w in enumerate(COMMON + sum(WORDS, ()))}}
SEQ_LEN = 64  # the tiny models' positions; `lorakit data prepare` takes no fewer


def save_word_tokenizer(folder: Path, bert: bool) -> None:
    """A word-level tokenizer of ids 0..95 into `folder` (BERT's [CLS]/[SEP] template if `bert`)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    if bert:
        backend.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                  model_max_length=SEQ_LEN, **({"cls_token": "[CLS]", "sep_token": "[SEP]"} if bert
                                                              else {"eos_token": "[SEP]"}))
    tok.save_pretrained(folder)


def save_tiny(arch: str, folder: Path) -> Path:
    """A tiny random `arch` with its word-level tokenizer, in `folder`: "llama" is tests.conftest's
    causal LM (so the classifier head is new); "bert" a BERT classifier of conftest's shape with
    weights of std 0.2, not 0.02: at the default init its [CLS] output barely depends on the
    other tokens, so no adapter could move the loss far within a test's few steps."""
    import transformers as tf

    if arch == "bert":
        torch.manual_seed(0)
        model = tf.BertForSequenceClassification(tf.BertConfig(
            vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=SEQ_LEN, num_labels=len(CLASSES), hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, initializer_range=0.2))
    else:
        model = tiny_model(arch)
    model.config.pad_token_id = SPECIAL["[PAD]"]
    model.save_pretrained(folder)
    save_word_tokenizer(folder, bert=arch == "bert")
    return folder


def text_of(label: int, rng: random.Random) -> str:
    """4 to 24 words: common words alternating with words of class `label`'s own, then a full stop."""
    pairs = [f"{rng.choice(COMMON[:-1])} {rng.choice(WORDS[label])}" for _ in range(rng.randint(2, 12))]
    return " ".join(pairs) + " ."


def write_records(path: Path, n: int = 150, seed: int = 0) -> Path:
    """A JSONL of `n` records ``{"text", "label"}``, the classes in turn."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": text_of(i % len(CLASSES), rng), "label": CLASSES[i % len(CLASSES)]}) + "\n")
    return path


def prepare(records: Path, out: Path, model_dir: Path, *extra: str) -> Path:
    """`lorakit data prepare --task classify` of `records` with the model's tokenizer."""
    from lorakit.cli import main

    code = main(["data", "prepare", "--task", "classify", "--input", str(records), "--out", str(out), "--model",
                 str(model_dir), "--seq-len", str(SEQ_LEN), "--val-fraction", "0.2", "--test-fraction", "0.2",
                 "--split-by", "sample", "--min-tokens", "1", *extra])
    assert code == 0
    return out
