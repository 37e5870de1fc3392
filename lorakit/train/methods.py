"""What trains: a LoRA/DoRA adapter, every weight (full), only the output head (a classifier's
head with --task classify), or virtual tokens in front of the input (prefix or prompt tuning).

Full fine-tuning and head-only are the baselines LoRA is judged against.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.adapters import (
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    add_adapter,
    add_prefix_tuning,
    add_prompt_tuning,
    set_trainable,
)
from lorakit.adapters.targets import parse_targets
from lorakit.errors import LorakitError
from lorakit.hub import base_model_fields
from lorakit.models import DEFAULT_MODEL
from lorakit.train.classify import prepare_classifier
from lorakit.train.config import TrainConfig


def lora_config(cfg: TrainConfig) -> LoraConfig:
    """The adapter a run trains, from its settings."""
    return LoraConfig(r=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=parse_targets(cfg.targets),
                      use_rslora=cfg.rslora, use_dora=cfg.method == "dora")


def untie_output_head(model: nn.Module) -> nn.Module:
    """Give the output head its own weight when it shares the input embedding's."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
    return head


def virtual_config(cfg: TrainConfig) -> PrefixTuningConfig | PromptTuningConfig:
    """The prefix- or prompt-tuning adapter a ``--method prefix|prompt`` run trains. A text-initialised
    prompt records the base's tokenizer (PEFT's `tokenizer_name_or_path`: the base model's name)."""
    if cfg.method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, prefix_projection=cfg.prefix_projection,
                                  encoder_hidden_size=cfg.encoder_hidden_size)
    tokenizer_name = None
    if cfg.prompt_init == "text":
        tokenizer_name = base_model_fields(str(cfg.model or DEFAULT_MODEL))["base_model_name_or_path"]
    return PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, init=cfg.prompt_init,
                              init_text=cfg.prompt_init_text, tokenizer_name_or_path=tokenizer_name)


def prepare_model(model: nn.Module, cfg: TrainConfig, tokenizer=None) -> nn.Module:
    """Attach what `cfg.method` trains and freeze the rest; returns the model. `tokenizer`: the run's,
    for ``--prompt-init text`` (the text's tokens start the prompt)."""
    torch.manual_seed(cfg.seed)  # adapter init is part of the run's identity
    if cfg.method == "prefix":  # a classifier's head trains beside (`lorakit.adapters.virtual_cls`)
        add_prefix_tuning(model, virtual_config(cfg))
    elif cfg.method == "prompt":
        if cfg.prompt_init == "text" and tokenizer is None:
            raise LorakitError("--prompt-init text: no tokenizer to tokenize --prompt-init-text with")
        add_prompt_tuning(model, virtual_config(cfg), tokenizer=tokenizer)
    elif cfg.task == "classify":  # a classifier's head, not lm_head (`lorakit.train.classify`)
        prepare_classifier(model, cfg.method, lora_config(cfg))
    elif cfg.method in ("lora", "dora", "qlora"):
        add_adapter(model, lora_config(cfg))
        set_trainable(model, "default")
    elif cfg.method == "full":
        model.requires_grad_(True)
    elif cfg.method == "head":
        model.requires_grad_(False)
        head = untie_output_head(model)
        if head is None:
            raise LorakitError(f"{type(model).__name__} has no output head to train; use --method lora")
        head.weight.requires_grad_(True)
    if cfg.grad_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model
