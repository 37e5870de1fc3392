"""Virtual-token adapters (prefix tuning, prompt tuning) on a transformers causal LM, by forward hooks.

Both methods change what the decoder *receives*, not any module of it: prefix tuning hands it a
KV cache that already holds N trained key/value pairs per layer, prompt tuning puts N trained
embeddings in front of the token embeddings. So the adapter is a forward pre-hook on the decoder
backbone (``model.base_model``: ``model.model``, GPT-2's ``transformer``), not a wrapper class:

* the model keeps its class, so ``model(...)``, ``model.generate(...)`` and lorakit's trainer, which
  calls ``model.base_model(...)`` and runs the head itself (`lorakit.train.objective`), all see the
  virtual tokens without knowing about them;
* a sequence classifier (``*ForSequenceClassification``) takes them the same way, its head trained
  beside them as PEFT's SEQ_CLS does (`lorakit.adapters.virtual_cls`);
* the hook rewrites the call's arguments the way PEFT's ``PeftModelForCausalLM.forward`` rewrites
  the base model's (peft/peft_model.py), so the numbers are PEFT's.

The trained module is registered on the model as ``model.lorakit_prompt`` (so ``model.parameters()``,
``.to()`` and checkpoints see it); the bookkeeping (`VirtualAdapter`) sits in the ``__dict__`` of the
model and of the backbone, where the module-level hook functions find it (a deep copy of the model
carries a working adapter). One virtual-token adapter per model, as PEFT allows one active.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lorakit.adapters.io import task_type
from lorakit.adapters.tasks import SEQ_CLS
from lorakit.adapters.virtual_cls import unwrap_heads, wrap_heads
from lorakit.errors import LorakitError

RECORD = "lorakit_virtual"    # __dict__ key of the VirtualAdapter on the model and on its backbone
MODULE = "lorakit_prompt"     # attribute holding the trained module
CACHE_MARK = "lorakit_virtual_tokens"  # set on a KV cache that holds the virtual tokens already
CAUSAL_LM = "CAUSAL_LM"


@dataclass(frozen=True)
class VirtualShape:
    """What PEFT fills in from the model config (peft/utils/other.py, _prepare_prompt_learning_config):
    decoder layers, the width of one token's keys (prefix: KV heads x head dim; prompt: hidden size)
    and the heads that width splits into."""

    num_layers: int
    token_dim: int
    num_attention_heads: int

    @property
    def head_dim(self) -> int:
        return self.token_dim // self.num_attention_heads


@dataclass
class VirtualAdapter:
    """One attached prefix- or prompt-tuning adapter.

    `config`: a `PrefixTuningConfig` or `PromptTuningConfig` (its `peft_type` says which);
    `shape`: the model facts; `encoder`: the trained module (also ``model.lorakit_prompt``);
    `backbone`: the decoder module the hook sits on; `task`: PEFT's task_type (CAUSAL_LM or
    SEQ_CLS); `heads`: a classifier's heads that train beside the virtual tokens (`attach` fills it)."""

    name: str
    config: Any
    shape: VirtualShape
    encoder: nn.Module
    backbone: nn.Module
    task: str = CAUSAL_LM
    heads: tuple[str, ...] = ()

    @property
    def peft_type(self) -> str:
        return self.config.peft_type

    @property
    def num_virtual_tokens(self) -> int:
        return self.config.num_virtual_tokens


def virtual_adapter(model: nn.Module) -> VirtualAdapter | None:
    """The prefix/prompt adapter attached to `model`, or None."""
    return model.__dict__.get(RECORD)


def virtual_positions(model: nn.Module) -> int:
    """How many leading positions of the model's outputs (hidden states, logits) belong to virtual
    tokens: N for prompt tuning on a causal LM (PEFT returns them too), 0 for prefix tuning, for a
    classifier and for no adapter. A trainer that runs the head itself drops these:
    ``hidden[:, virtual_positions(model):]``."""
    record = virtual_adapter(model)
    prompt = record is not None and record.peft_type == "PROMPT_TUNING" and record.task == CAUSAL_LM
    return record.num_virtual_tokens if prompt else 0


def text_config(model: nn.Module):
    """The decoder's config (a multimodal model's text config, as PEFT reads it)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_shape(model: nn.Module, prefix: bool) -> VirtualShape:
    """The `VirtualShape` PEFT derives for `model`. For prefix tuning with grouped-query attention
    the prefix holds the KV heads only (PEFT #1901): token_dim = KV heads x head dim."""
    cfg = text_config(model)
    layers, dim, heads = (getattr(cfg, k, None) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads"))
    if not all(isinstance(v, int) and v > 0 for v in (layers, dim, heads)):
        raise LorakitError(f"{type(model).__name__}: its config gives no layer count, hidden size or head count; "
                           "prefix and prompt tuning need all three")
    if prefix:
        # per-layer KV shapes (Gemma 4) or layers that reuse another's KV: PEFT skips layers there.
        # Read from the saved fields, as PEFT does (newer configs also have a per_layer_config property)
        saved = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
        for key in ("global_head_dim", "per_layer_config", "num_kv_shared_layers"):
            if saved.get(key):
                raise LorakitError(f"{type(model).__name__}: '{key}' in its config: layers with different KV shapes "
                                   "are not supported by lorakit's prefix tuning")
        kv_heads = getattr(cfg, "num_key_value_heads", None)
        if kv_heads:
            head_dim = getattr(cfg, "head_dim", None) or dim // heads
            dim, heads = head_dim * kv_heads, kv_heads
    return VirtualShape(layers, dim, heads)


def check_model(model: nn.Module) -> nn.Module:
    """The backbone of causal LM or classifier `model`; refuses other models and a second adapter."""
    backbone = check_base(model)
    if virtual_adapter(model) is not None:
        raise LorakitError(f"a {virtual_adapter(model).peft_type} adapter is attached already; "
                           "remove_virtual_adapter(model) first (one per model, as in PEFT)")
    return backbone


def model_task(model: nn.Module) -> str:
    """PEFT's task_type of a model virtual tokens run on: CAUSAL_LM (GPT-2's GPT2LMHeadModel too) or
    SEQ_CLS; refuses any other."""
    task = task_type(model)
    if task == SEQ_CLS or task == CAUSAL_LM:
        return task
    if type(model).__name__.endswith("LMHeadModel"):
        return CAUSAL_LM
    raise LorakitError(f"{type(model).__name__}: prefix and prompt tuning are for causal LMs (*ForCausalLM, "
                       "*LMHeadModel) and sequence classifiers (*ForSequenceClassification) only")


def check_base(model: nn.Module) -> nn.Module:
    """The backbone of causal LM or classifier `model`; refuses models virtual tokens cannot run on."""
    model_task(model)
    backbone = getattr(model, "base_model", None)
    if not isinstance(backbone, nn.Module) or backbone is model:
        raise LorakitError(f"{type(model).__name__}: no backbone (model.base_model) to attach virtual tokens to")
    return backbone


def attach(model: nn.Module, record: VirtualAdapter, backbone_hook: Callable, model_hook: Callable | None = None,
           trainable: bool = True, output_hook: Callable | None = None) -> VirtualAdapter:
    """Freeze the base, register the encoder and the hooks (`output_hook`: a forward hook on the
    backbone); a classifier's heads get the adapter's own copy; `record` becomes the model's adapter."""
    model.requires_grad_(False)
    record.encoder.requires_grad_(trainable)
    record.task = model_task(model)
    record.heads = wrap_heads(model, record.name, trainable)
    model.add_module(MODULE, record.encoder)
    model.__dict__[RECORD] = record
    record.backbone.__dict__[RECORD] = record
    record.backbone.register_forward_pre_hook(backbone_hook, with_kwargs=True)
    if output_hook is not None:
        record.backbone.register_forward_hook(output_hook, with_kwargs=True)
    if model_hook is not None:
        model.register_forward_pre_hook(model_hook, with_kwargs=True)
    return record


def remove_virtual_adapter(model: nn.Module) -> nn.Module:
    """Take the prefix/prompt adapter off `model` (hooks, module, bookkeeping); returns the model."""
    record = virtual_adapter(model)
    if record is None:
        raise LorakitError(f"{type(model).__name__} has no prefix or prompt tuning adapter to remove")
    for module in (model, record.backbone):
        for hooks, with_kwargs in ((module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs),
                                   (module._forward_hooks, module._forward_hooks_with_kwargs)):
            for key, hook in list(hooks.items()):
                if getattr(hook, "lorakit_virtual_hook", False):
                    del hooks[key]
                    with_kwargs.pop(key, None)
        module.__dict__.pop(RECORD, None)
    unwrap_heads(model, record.heads)
    delattr(model, MODULE)
    return model


def virtual_hook(fn: Callable) -> Callable:
    """Mark `fn` as a virtual-token hook (so `remove_virtual_adapter` finds it and nothing else)."""
    fn.lorakit_virtual_hook = True
    return fn


_SIGNATURES: dict[type, inspect.Signature] = {}


def bind_call(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by parameter name (``**kwargs`` flattened in), as a hook may rewrite them
    and pass them back as keywords only."""
    sig = _SIGNATURES.get(type(module))
    if sig is None:
        sig = _SIGNATURES[type(module)] = inspect.signature(module.forward)
    call: dict[str, Any] = {}
    for name, value in sig.bind_partial(*args, **kwargs).arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise LorakitError(f"{type(module).__name__}: extra positional arguments with virtual tokens")
        else:
            call[name] = value
    return call


def cache_slot(module: nn.Module, call: dict[str, Any]) -> str:
    """The argument that carries the KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    if "cache" in call or "cache" in _SIGNATURES[type(module)].parameters:
        if call.get("cache") is None and call.get("past_key_values") is not None:
            call["cache"] = call.pop("past_key_values")
        call.pop("past_key_values", None)
        return "cache"
    return "past_key_values"


def cache_state(record: VirtualAdapter, cache: Any) -> bool:
    """Whether the virtual tokens must go in now: True for no cache or an empty one, False for a
    cache that holds them already (a decoding step); anything else is refused."""
    from transformers import DynamicCache

    if cache is None:
        return True
    if not isinstance(cache, DynamicCache):
        raise LorakitError(f"{record.peft_type}: the KV cache must be transformers' DynamicCache, got "
                           f"{type(cache).__name__}; for the serving engine load the adapter with "
                           "lorakit.infer.virtual_rows.load_any_adapter instead")
    if cache.get_seq_length() == 0:
        return True
    if getattr(cache, CACHE_MARK, None) != record.num_virtual_tokens:
        raise LorakitError(f"{record.peft_type}: the KV cache passed in was not started with this adapter's "
                           "virtual tokens; start decoding from an empty cache")
    return False


def extend_mask(record: VirtualAdapter, call: dict[str, Any], batch: int) -> None:
    """Put N ones in front of a 2D attention mask (the virtual tokens are seen by every row)."""
    mask = call.get("attention_mask")
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise LorakitError(f"{record.peft_type}: only a 2D (batch, tokens) attention mask can be extended by the "
                           "virtual tokens")
    ones = torch.ones(batch, record.num_virtual_tokens, dtype=mask.dtype, device=mask.device)
    call["attention_mask"] = torch.cat((ones, mask), dim=1)


def batch_size(call: dict[str, Any]) -> int:
    tokens = call.get("input_ids")
    tokens = tokens if tokens is not None else call.get("inputs_embeds")
    if tokens is None:
        raise LorakitError("virtual tokens need input_ids or inputs_embeds")
    return tokens.shape[0]
