"""Prefix- and prompt-tuning adapters on the serving engine: held as tensors, applied per row.

A virtual-token adapter changes what one request starts from, not any weight. So the engine
holds it beside the LoRA adapters as plain tensors (`VirtualRows`, kept in the model's
``__dict__`` like the LoRA registry), not as `lorakit.adapters.virtual`'s forward hooks, which
would act on every row of a batch. A request for one gets a cache slot like any other; only
how that slot starts differs, and both match PEFT's ``PeftModelForCausalLM.forward``:

* prefix tuning: the N key/value pairs of every layer are written into the slot's first N
  positions as saved, unrotated (PEFT hands them to the model as a KV cache). The prompt then
  fills positions N.., and its rotary positions are N.. too: the model counts PEFT's prefix
  cache, and PEFT shifts explicit position ids by N.
* prompt tuning: the N embeddings are prefilled in front of the prompt's first chunk, so they
  take positions 0..N-1 and the prompt follows (PEFT prepends them to ``inputs_embeds`` and
  drops position ids: the model counts from the first virtual token).

After the prefill the row decodes in the shared batched step with no LoRA adapter (its `lora`
name is None), so LoRA and base rows run exactly as they do without virtual adapters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.adapters import adapters, disable_adapters, load_adapter
from lorakit.adapters.prefix import PrefixTuningConfig, add_prefix_tuning, prefix_kv
from lorakit.adapters.prompt import PromptTuningConfig, add_prompt_tuning
from lorakit.adapters.prompt_io import read_virtual_adapter, virtual_peft_type
from lorakit.adapters.virtual import VirtualShape, remove_virtual_adapter
from lorakit.errors import LorakitError
from lorakit.infer.kvcache import SlotCache
from lorakit.infer.request import Request

REGISTRY = "lorakit_virtual_rows"  # model.__dict__ key: {name: VirtualRows}
PREFIX = "PREFIX_TUNING"


@dataclass(frozen=True)
class VirtualRows:
    """One loaded prefix/prompt adapter. `tensor` is PEFT's ``prompt_embeddings`` as saved, fp32 on
    the model's device: (N, layers*2*token_dim) for prefix tuning, (N, hidden size) for prompt tuning."""

    name: str
    config: PrefixTuningConfig | PromptTuningConfig
    tensor: torch.Tensor
    shape: VirtualShape

    @property
    def peft_type(self) -> str:
        return self.config.peft_type

    @property
    def num_virtual_tokens(self) -> int:
        return self.config.num_virtual_tokens

    def prefix_states(self, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values), each (KV heads, N, head_dim), cast to `dtype` (PEFT casts the
        prefix to the base's dtype)."""
        return [(k[0], v[0]) for k, v in prefix_kv(self.tensor.to(dtype), self.shape)]


def virtual_rows(model: nn.Module) -> dict[str, VirtualRows]:
    """The prefix/prompt adapters loaded on `model` for the engine, by name (empty dict if none)."""
    return model.__dict__.setdefault(REGISTRY, {})


def is_virtual_folder(path: str | os.PathLike) -> bool:
    """Whether adapter folder `path` holds a PREFIX_TUNING or PROMPT_TUNING adapter."""
    return virtual_peft_type(path) is not None


def prepare_virtual(model: nn.Module, path: str | os.PathLike, name: str) -> VirtualRows:
    """Read and check the prefix/prompt folder `path` against `model` (left unchanged)."""
    config, tensor, shape = read_virtual_adapter(model, path)
    device = model.get_input_embeddings().weight.device
    return VirtualRows(name, config, tensor.to(device, torch.float32), shape)


def attach_virtual(model: nn.Module, rows: VirtualRows) -> None:
    """Make `rows` loadable by name on `model` (the engine's worker thread, when one runs)."""
    if rows.name in adapters(model) or rows.name in virtual_rows(model):
        raise LorakitError(f"an adapter named {rows.name!r} is already loaded; pick another name")
    virtual_rows(model)[rows.name] = rows


def delete_virtual(model: nn.Module, name: str) -> None:
    """Forget prefix/prompt adapter `name` (no request may be using it)."""
    virtual_rows(model).pop(name)


def load_any_adapter(model: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load adapter folder `path` as `name` for generation: a prefix/prompt one as `VirtualRows`
    (for the engine), any other with `lorakit.adapters.load_adapter`."""
    if name in virtual_rows(model):
        raise LorakitError(f"an adapter named {name!r} is already loaded; pick another name")
    if is_virtual_folder(path):
        attach_virtual(model, prepare_virtual(model, path, name))
    else:
        load_adapter(model, path, name)


def start_row(cache: SlotCache, req: Request, rows: VirtualRows | None) -> None:
    """Ready `req` (in its slot, nothing cached yet) for its prefill: its LoRA name, and for a
    virtual adapter the prefix written into the slot, or the prompt embeddings kept for the first chunk."""
    if rows is None:
        req.lora = req.adapter
        return
    req.lora, req.virtual = None, rows.num_virtual_tokens
    if rows.peft_type == PREFIX:
        req.cached = cache.seed(req.slot, rows.prefix_states(cache.dtype))
    else:
        req.virtual_embeds = rows.tensor


def prompt_inputs(model: nn.Module, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[embeds; embed(ids)]``, (1, N + T, hidden), from `embeds` (N, hidden) and `ids` (1, T): the
    model's input embeddings for a prompt-tuning row's first chunk, cast as PEFT casts them."""
    tokens = model.get_input_embeddings()(ids)
    return torch.cat((embeds.to(tokens.dtype)[None], tokens), dim=1)


@contextmanager
def running_virtual(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """Inside the block, plain ``model(...)`` calls (and lorakit's loss) run prefix/prompt adapter
    `name` with every LoRA adapter off: its hooks are attached as `load_virtual_adapter` attaches
    them, and removed on exit."""
    rows = virtual_rows(model)[name]
    add = add_prefix_tuning if rows.peft_type == PREFIX else add_prompt_tuning
    with disable_adapters(model):
        add(model, rows.config, name, weights=rows.tensor, trainable=False)
        try:
            yield model
        finally:
            remove_virtual_adapter(model)
