"""Prompt tuning (Lester et al. 2021) as PEFT computes it: N trained embeddings before the tokens.

The decoder gets ``inputs_embeds = [prompt; embed(input_ids)]`` and a mask with N ones in front
(peft/peft_model.py, ``PeftModelForCausalLM.forward``); position ids are dropped (PEFT ignores
them), so the virtual tokens take positions 0..N-1 and the text follows. The outputs keep the N
virtual positions, as PEFT's do, and labels passed to the model get N ignored ones in front.
In a decoding step (a cache that holds the prompt already) only the mask is extended. On a sequence
classifier (PEFT's SEQ_CLS) token type ids get N zeros in front instead of being dropped, labels
(one class per row) are left alone, and the backbone's output loses the N virtual positions
(`lorakit.adapters.virtual_cls`).

Initial values (PEFT's ``PromptEmbedding``): random (``nn.Embedding``'s normal init), the
embeddings of the tokens of `init_text` (repeated or cut to N), or of N random vocabulary tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.adapters.tasks import SEQ_CLS
from lorakit.adapters.virtual import (
    CACHE_MARK,
    VirtualAdapter,
    attach,
    batch_size,
    bind_call,
    cache_slot,
    cache_state,
    check_model,
    extend_mask,
    model_shape,
    model_task,
    virtual_hook,
)
from lorakit.adapters.virtual_cls import drop_virtual_outputs
from lorakit.errors import LorakitError, short_repr

PROMPT_INITS = ("random", "text", "sample_vocab")
IGNORE = -100  # the label transformers' loss skips (PEFT labels the virtual tokens with it)


@dataclass
class PromptTuningConfig:
    """Hyper-parameters of a prompt-tuning adapter (PEFT's PromptTuningConfig)."""

    num_virtual_tokens: int = field(default=20, metadata={"help": "number of trained embeddings N"})
    init: str = field(default="random", metadata={"help": "random, text (embeddings of init_text), sample_vocab"})
    init_text: str | None = field(default=None, metadata={"help": "text whose token embeddings start the prompt"})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "tokenizer for init_text (folder or Hub id; PEFT records it)"})
    peft_type: str = field(default="PROMPT_TUNING", init=False)

    def __post_init__(self) -> None:
        n = self.num_virtual_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise LorakitError(f"num_virtual_tokens must be a positive integer, got {short_repr(n)}")
        if self.init not in PROMPT_INITS:
            raise LorakitError(f"unknown prompt init {short_repr(self.init)}: use one of {', '.join(PROMPT_INITS)}")
        for key in ("init_text", "tokenizer_name_or_path"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise LorakitError(f"{key} must be a string, got {short_repr(getattr(self, key))}")
        if self.init == "text" and not (isinstance(self.init_text, str) and self.init_text):
            raise LorakitError("prompt init 'text' needs init_text (the text whose token embeddings start the prompt)")
        if self.init == "text" and not (isinstance(self.tokenizer_name_or_path, str) and self.tokenizer_name_or_path):
            raise LorakitError("prompt init 'text' needs tokenizer_name_or_path (PEFT records it with the adapter)")


class PromptEmbedding(nn.Module):
    """The trained prompt: ``embedding.weight``, (N, hidden size), PEFT's one parameter."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)

    def forward(self) -> torch.Tensor:
        return self.embedding.weight


def init_token_ids(config: PromptTuningConfig, tokenizer=None) -> list[int]:
    """The N token ids whose embeddings start a text-initialised prompt: the tokenizer's ids of
    `init_text` (special tokens included, as PEFT calls it), repeated or cut to N."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)
    ids = list(tokenizer(config.init_text)["input_ids"])
    if not ids:
        raise LorakitError(f"init_text {short_repr(config.init_text)} gives no tokens; use another text")
    n = config.num_virtual_tokens
    return (ids * math.ceil(n / len(ids)))[:n]


def _initial(model: nn.Module, config: PromptTuningConfig, tokenizer) -> torch.Tensor | None:
    """Initial prompt embeddings (N, hidden) for text/sample_vocab inits; None for random."""
    table = model.get_input_embeddings()
    if config.init == "random":
        return None
    if config.init == "text":
        ids = torch.tensor(init_token_ids(config, tokenizer), dtype=torch.long)
    else:
        ids = torch.randint(0, table.num_embeddings, (config.num_virtual_tokens,), dtype=torch.long)
    vocab = table.weight.shape[0]
    if int(ids.max()) >= vocab:
        raise LorakitError(f"init_text has token id {int(ids.max())} but the model's vocabulary has {vocab} rows: "
                           "is the tokenizer the model's?")
    with torch.no_grad():  # the embedding module's own output: Gemma's scale included, as in PEFT
        return table(ids.to(table.weight.device)).detach().clone().to(torch.float32)


@virtual_hook
def _prompt_hook(backbone: nn.Module, args: tuple, kwargs: dict):
    """The decoder's call as PEFT makes it: [prompt; token embeddings], mask + N ones, no position ids."""
    record: VirtualAdapter = backbone.__dict__["lorakit_virtual"]
    call = bind_call(backbone, args, kwargs)
    batch = batch_size(call)
    slot = cache_slot(backbone, call)
    inject = cache_state(record, call.get(slot))
    extend_mask(record, call, batch)
    if call.get("position_ids") is not None:
        call["position_ids"] = None  # PEFT ignores them: the model counts from the start of the prompt
    types = call.pop("token_type_ids", None)  # PEFT drops them for causal LMs
    if types is not None and record.task == SEQ_CLS:  # and gives a classifier's virtual tokens type 0
        call["token_type_ids"] = torch.cat((types.new_zeros(batch, record.num_virtual_tokens), types), dim=1)
    if call.get("cache_position") is not None:
        raise LorakitError("prompt tuning: pass no cache_position; the model derives it from the inputs")
    if not inject:
        return (), call
    embeds = call.get("inputs_embeds")
    if embeds is None:
        embeds = backbone.get_input_embeddings()(call["input_ids"])
    prompts = record.encoder().to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
    call["inputs_embeds"] = torch.cat((prompts, embeds), dim=1)
    call["input_ids"] = None
    use_cache = call.get("use_cache")
    if call.get(slot) is not None or (use_cache if use_cache is not None else getattr(backbone.config, "use_cache", False)):
        from transformers import DynamicCache

        cache = call.get(slot) if call.get(slot) is not None else DynamicCache(config=backbone.config)
        setattr(cache, CACHE_MARK, record.num_virtual_tokens)  # later steps: the prompt is in it
        call[slot] = cache
    return (), call


@virtual_hook
def _labels_hook(model: nn.Module, args: tuple, kwargs: dict):
    """Labels for the outputs' N virtual positions: ignored, as PEFT labels them."""
    call = bind_call(model, args, kwargs)
    labels = call.get("labels")
    if labels is None:
        return None
    n = model.__dict__["lorakit_virtual"].num_virtual_tokens
    call["labels"] = torch.cat((labels.new_full((labels.shape[0], n), IGNORE), labels), dim=1)
    return (), call


def add_prompt_tuning(model: nn.Module, config: PromptTuningConfig, name: str = "default", *, tokenizer=None,
                      weights: torch.Tensor | None = None, trainable: bool = True) -> VirtualAdapter:
    """Attach a prompt-tuning adapter to causal LM or sequence classifier `model` (in place); the base
    is frozen and only the N prompt embeddings train (and a classifier's head, PEFT's SEQ_CLS).

    `tokenizer`: for ``init='text'`` (else `config.tokenizer_name_or_path` is loaded); `weights`: a
    saved prompt, (N, hidden size), used instead of any init. Checked before the model is touched.
    """
    backbone = check_model(model)
    shape = model_shape(model, prefix=False)
    device = model.get_input_embeddings().weight.device
    encoder = PromptEmbedding(config.num_virtual_tokens, shape.token_dim).to(device)
    start = weights if weights is not None else _initial(model, config, tokenizer)
    if start is not None:
        want = tuple(encoder.embedding.weight.shape)
        if tuple(start.shape) != want:
            raise LorakitError(f"prompt of shape {tuple(start.shape)} but this model needs {want} (N x hidden size)")
        with torch.no_grad():
            encoder.embedding.weight.copy_(start.to(torch.float32))
    record = VirtualAdapter(name, config, shape, encoder, backbone)
    if model_task(model) == SEQ_CLS:
        return attach(model, record, _prompt_hook, trainable=trainable, output_hook=drop_virtual_outputs)
    return attach(model, record, _prompt_hook, _labels_hook, trainable=trainable)
