"""Prefix tuning (Li & Liang 2021) as PEFT computes it: N trained key/value pairs in every layer.

The prefix is a KV cache the decoder starts from (peft/peft_model.py, ``get_prompt``): its keys
were never rotated, so they carry no position; the real tokens sit at positions N, N+1, ... (the
model counts the cache, and explicit position ids are shifted by N, as PEFT shifts them), and the
attention mask gets N ones in front. With `prefix_projection` the N vectors pass through PEFT's
two-layer tanh MLP first (``PrefixEncoder``); the file holds the MLP's output only, as PEFT saves it.
On a sequence classifier (PEFT's SEQ_CLS) the head trains beside the prefix and token type ids are
kept (`lorakit.adapters.virtual_cls`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.adapters.tasks import SEQ_CLS
from lorakit.adapters.virtual import (
    CACHE_MARK,
    VirtualAdapter,
    VirtualShape,
    attach,
    batch_size,
    bind_call,
    cache_slot,
    cache_state,
    check_model,
    extend_mask,
    model_shape,
    virtual_adapter,
    virtual_hook,
)
from lorakit.errors import LorakitError, short_repr
from lorakit.families import FALLBACK, family_for

PREFIX_INITS = ("random", "zero")


@dataclass
class PrefixTuningConfig:
    """Hyper-parameters of a prefix-tuning adapter (PEFT's PrefixTuningConfig; the model's shape is
    filled in when it is attached, as PEFT fills it)."""

    num_virtual_tokens: int = field(default=20, metadata={"help": "prefix length N (key/value pairs per layer)"})
    prefix_projection: bool = field(default=False, metadata={"help": "train N vectors through a tanh MLP"})
    encoder_hidden_size: int | None = field(default=None, metadata={"help": "the MLP's width (default: token_dim)"})
    init: str = field(default="random", metadata={"help": "random, or zero (the prefix starts as zeros)"})
    peft_type: str = field(default="PREFIX_TUNING", init=False)

    def __post_init__(self) -> None:
        if not _positive_int(self.num_virtual_tokens):
            raise LorakitError(f"num_virtual_tokens must be a positive integer, got {short_repr(self.num_virtual_tokens)}")
        if not isinstance(self.prefix_projection, bool):
            raise LorakitError(f"prefix_projection must be true or false, got {short_repr(self.prefix_projection)}")
        if self.encoder_hidden_size is not None and not _positive_int(self.encoder_hidden_size):
            raise LorakitError(f"encoder_hidden_size must be a positive integer, got "
                               f"{short_repr(self.encoder_hidden_size)}")
        if self.init not in PREFIX_INITS:
            raise LorakitError(f"unknown prefix init {short_repr(self.init)}: use one of {', '.join(PREFIX_INITS)}")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class PrefixEncoder(nn.Module):
    """The trained prefix. Without an MLP: ``embedding.weight`` (N, layers*2*token_dim) is the prefix;
    with one (`hidden` set): ``transform(embedding.weight)``, embedding (N, token_dim). Parameter
    names and creation order are PEFT's, so one seed gives both the same initial values."""

    def __init__(self, n: int, shape: VirtualShape, hidden: int | None = None, zero: bool = False):
        super().__init__()
        width = shape.num_layers * 2 * shape.token_dim
        self.transform: nn.Sequential | None = None
        if hidden is not None:
            self.embedding = nn.Embedding(n, shape.token_dim)
            self.transform = nn.Sequential(nn.Linear(shape.token_dim, hidden), nn.Tanh(), nn.Linear(hidden, width))
            if zero:
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            self.embedding = nn.Embedding(n, width)
            if zero:
                nn.init.zeros_(self.embedding.weight)

    def forward(self) -> torch.Tensor:
        """The flattened prefix, (N, layers*2*token_dim): what PEFT saves as `prompt_embeddings`."""
        weight = self.embedding.weight
        return self.transform(weight) if self.transform is not None else weight


def prefix_states(record: VirtualAdapter, batch: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the prefix keys and values, each (batch, KV heads, N, head_dim), in PEFT's layout:
    the flat vector of one virtual token is [layer][key, value][head][dim]."""
    return prefix_kv(record.encoder().to(dtype), record.shape, batch)


def prefix_kv(flat: torch.Tensor, shape: VirtualShape, batch: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The flat prefix `flat` (N, layers*2*token_dim) as per-layer (keys, values), each
    (batch, KV heads, N, head_dim): views of `flat` (PEFT's ``get_prompt`` layout)."""
    n = flat.shape[0]
    kv = flat.view(1, n, shape.num_layers * 2, shape.num_attention_heads, shape.head_dim).permute(2, 0, 3, 1, 4)
    kv = kv.expand(-1, batch, -1, -1, -1)
    return [(kv[2 * i], kv[2 * i + 1]) for i in range(shape.num_layers)]


def check_prefix_model(model: nn.Module) -> None:
    """Refuse a model whose KV cache layout lorakit does not know (PEFT reorders the prefix for some)."""
    if family_for(model) is FALLBACK:
        raise LorakitError(f"{type(model).__name__}: prefix tuning needs the model's KV cache layout, known for the "
                           "families in lorakit's registry only (some architectures reorder PEFT's prefix)")


def prefix_cache(model: nn.Module, batch: int, cache=None):
    """A transformers `DynamicCache` holding the prefix for `batch` rows (`cache`: an empty one to
    fill, e.g. the one `generate` made). Decoding from it with ``model(...)`` is PEFT's model: the
    hook sees a cache that holds the prefix and only extends the mask and the position ids."""
    record = virtual_adapter(model)
    if record is None or record.peft_type != "PREFIX_TUNING":
        raise LorakitError(f"{type(model).__name__} has no prefix tuning adapter")
    return _fill(record, batch, cache)


def _fill(record: VirtualAdapter, batch: int, cache=None):
    from transformers import DynamicCache

    backbone = record.backbone
    # the cache transformers itself builds for this config (Gemma's sliding layers included; PEFT
    # builds that one for Gemma and a plain one elsewhere, which holds the same keys and values)
    cache = cache if cache is not None else DynamicCache(config=backbone.config)
    dtype = getattr(backbone, "dtype", None)  # PEFT casts the prefix to the base model's dtype
    for layer, (keys, values) in enumerate(prefix_states(record, batch, dtype or torch.float32)):
        cache.update(keys, values, layer)
    setattr(cache, CACHE_MARK, record.num_virtual_tokens)
    return cache


@virtual_hook
def _prefix_hook(backbone: nn.Module, args: tuple, kwargs: dict):
    """The decoder's call as PEFT makes it: prefix cache, mask + N ones, position ids + N."""
    record: VirtualAdapter = backbone.__dict__["lorakit_virtual"]
    if backbone.training and getattr(backbone, "gradient_checkpointing", False):
        raise LorakitError("prefix tuning does not work with gradient checkpointing (the layers re-run against a "
                           "cache they already extended; PEFT refuses it too): turn checkpointing off")
    call = bind_call(backbone, args, kwargs)
    if call.get("cache_position") is not None:
        raise LorakitError("prefix tuning: pass no cache_position; the model derives it from the prefix cache")
    batch = batch_size(call)
    slot = cache_slot(backbone, call)
    if cache_state(record, call.get(slot)):
        call[slot] = _fill(record, batch, call.get(slot))
    extend_mask(record, call, batch)
    if call.get("position_ids") is not None:
        call["position_ids"] = call["position_ids"] + record.num_virtual_tokens
    if record.task != SEQ_CLS:
        call.pop("token_type_ids", None)  # PEFT drops them for causal LMs, keeps a classifier's
    return (), call


def add_prefix_tuning(model: nn.Module, config: PrefixTuningConfig, name: str = "default", *,
                      weights: torch.Tensor | None = None, trainable: bool = True) -> VirtualAdapter:
    """Attach a prefix-tuning adapter to causal LM or sequence classifier `model` (in place); the base
    is frozen and only the prefix (with `prefix_projection`: its N vectors and the MLP) trains, with a
    classifier's head beside it (PEFT's SEQ_CLS).

    `weights`: a saved prefix, (N, layers*2*token_dim); the adapter then holds it as is, without the
    MLP (PEFT's inference mode). Everything is checked before the model is touched.
    """
    backbone = check_model(model)
    check_prefix_model(model)
    if getattr(backbone, "gradient_checkpointing", False):
        raise LorakitError("prefix tuning does not work with gradient checkpointing (PEFT refuses it too): "
                           "turn checkpointing off first")
    shape = model_shape(model, prefix=True)
    hidden = (config.encoder_hidden_size or shape.token_dim) if config.prefix_projection and weights is None else None
    device = model.get_input_embeddings().weight.device
    encoder = PrefixEncoder(config.num_virtual_tokens, shape, hidden, zero=config.init == "zero").to(device)
    if weights is not None:
        want = tuple(encoder.embedding.weight.shape)
        if tuple(weights.shape) != want:
            raise LorakitError(f"prefix of shape {tuple(weights.shape)} but this model needs {want} "
                               f"(N x layers*2*token_dim)")
        with torch.no_grad():
            encoder.embedding.weight.copy_(weights.to(torch.float32))
    record = VirtualAdapter(name, config, shape, encoder, backbone)
    return attach(model, record, _prefix_hook, trainable=trainable)
