"""Shared fixtures: tiny random-weight models of each architecture lorakit supports."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "gutenberg-russian")


# one tiny model per entry of lorakit.families (tests/test_families.py checks that none is missing)
TINY_ARCHS = ("llama", "smollm3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3-multimodal",
              "phi3", "gpt2", "bert", "roberta", "distilbert")


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model of architecture `arch` small enough to run in milliseconds."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=True))
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=False))
    elif arch == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=None))
    elif arch == "gemma":
        model = tf.GemmaForCausalLM(tf.GemmaConfig(**common, head_dim=8))
    elif arch == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=8, sliding_window=16))
    elif arch == "gemma3":
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=16))
    elif arch == "gemma3-multimodal":  # the text decoder behind a (tiny) SigLIP vision tower
        vision = tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14)
        model = tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(
            text_config=tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=16), vision_config=vision,
            mm_tokens_per_image=4, image_token_index=95, boi_token_index=93, eoi_token_index=94))
    elif arch == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=8, tie_word_embeddings=False))
    elif arch == "smollm3":
        model = tf.SmolLM3ForCausalLM(tf.SmolLM3Config(**common, no_rope_layer_interval=2, pad_token_id=0))
    elif arch == "phi3":
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**common, pad_token_id=0))
    elif arch == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    elif arch == "bert":
        cfg = tf.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=64, num_labels=3,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = tf.BertForSequenceClassification(cfg)
    elif arch == "roberta":
        cfg = tf.RobertaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=48, max_position_embeddings=72, num_labels=3, pad_token_id=1,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = tf.RobertaForSequenceClassification(cfg)
    elif arch == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                  max_position_embeddings=64, num_labels=3, dropout=0.0, attention_dropout=0.0,
                                  seq_classif_dropout=0.0)
        model = tf.DistilBertForSequenceClassification(cfg)
    else:
        raise ValueError(arch)
    # Random init of some models leaves norms at exactly 1 and biases at 0: perturb everything so
    # every parameter matters to the comparison.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def tiny_inputs(arch: str, batch: int = 2, seq: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token ids (and an attention mask) for `tiny_model(arch)`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a forward pass (no grad)."""
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def tiny():
    return tiny_model
