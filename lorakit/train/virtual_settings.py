"""The settings of prefix and prompt tuning (``--method prefix|prompt``) and what they exclude.

Each setting is refused with any other method, and these methods refuse what makes no sense for
virtual tokens: LoRA's settings, packing (the virtual tokens sit in front of every row, so packed
samples would share them) and, for prefix tuning, gradient checkpointing (the recomputed layers
would extend the prefix's KV cache a second time). With --task classify the classifier's head
trains beside the virtual tokens, as PEFT's SEQ_CLS prompt learning trains it.
"""

from __future__ import annotations

from typing import Any

from lorakit.errors import LorakitError, short_repr

VIRTUAL_METHODS = ("prefix", "prompt")  # virtual tokens in front of the input (`lorakit.adapters.virtual`)
PROMPT_INITS = ("random", "text", "sample_vocab")  # what `add_prompt_tuning` starts a prompt from
VIRTUAL_TOKENS = 20  # --virtual-tokens where not given: PEFT's examples' usual prefix/prompt length


def check_virtual_settings(cfg: Any) -> None:
    """Refuse prefix/prompt settings without their method, and what those methods cannot take (one line
    each); fill in --virtual-tokens. `cfg`: a `TrainConfig` being built."""
    method = cfg.method
    prefix, prompt = method == "prefix", method == "prompt"
    if cfg.prompt_init not in PROMPT_INITS:
        raise LorakitError(f"--prompt-init {short_repr(cfg.prompt_init)}: use one of {', '.join(PROMPT_INITS)}")
    if cfg.prompt_init_text is not None and not isinstance(cfg.prompt_init_text, str):
        raise LorakitError(f"--prompt-init-text must be a string, got {short_repr(cfg.prompt_init_text)}")
    misplaced = [("--virtual-tokens", cfg.virtual_tokens is not None, prefix or prompt, "prefix or prompt"),
                 ("--prefix-projection", cfg.prefix_projection, prefix, "prefix"),
                 ("--encoder-hidden-size", cfg.encoder_hidden_size is not None, prefix, "prefix"),
                 ("--prompt-init", cfg.prompt_init != "random", prompt, "prompt"),
                 ("--prompt-init-text", cfg.prompt_init_text is not None, prompt, "prompt")]
    for flag, given, applies, where in misplaced:
        if given and not applies:
            raise LorakitError(f"{flag} applies to --method {where}, not --method {method}; drop it")
    if not (prefix or prompt):
        return
    lora_only = [("--rslora", cfg.rslora), ("--dropout", cfg.dropout != 0.0), ("--targets", cfg.targets != "all-linear")]
    for flag, given in lora_only:
        if given:
            raise LorakitError(f"{flag} is a LoRA setting; --method {method} trains virtual tokens, no LoRA "
                               "layers: drop it")
    if cfg.virtual_tokens is None:
        cfg.virtual_tokens = VIRTUAL_TOKENS
    if cfg.encoder_hidden_size is not None and not cfg.prefix_projection:
        raise LorakitError("--encoder-hidden-size is the width of the prefix MLP: add --prefix-projection, "
                           "or drop it")
    if cfg.prompt_init == "text" and not cfg.prompt_init_text:
        raise LorakitError("--prompt-init text needs --prompt-init-text (the text whose token embeddings "
                           "start the prompt)")
    if cfg.prompt_init_text is not None and cfg.prompt_init != "text":
        raise LorakitError(f"--prompt-init-text is used by --prompt-init text only (here: {cfg.prompt_init}); "
                           "add --prompt-init text or drop it")
    if cfg.packing:  # an explicit --packing; auto resolves to off (`lorakit.train.defaults`)
        raise LorakitError(f"--packing with --method {method}: the virtual tokens sit in front of every row, so "
                           "packed samples would share them; drop --packing")
    if prefix and cfg.grad_checkpoint:
        raise LorakitError("--grad-checkpoint with --method prefix: the recomputed layers would extend the "
                           "prefix's KV cache a second time (PEFT refuses it too); drop --grad-checkpoint")
