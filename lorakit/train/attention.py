"""Attention implementations the trainer adds to transformers' registry.

`eager_recompute`: the architecture's own eager attention, with its T x T probabilities
recomputed in backward instead of saved. Under compiled bf16 on a CPU, eager attention's matmuls
beat the sdpa kernel, but saving its probabilities costs batch x heads x T x T floats per layer;
recomputing them repeats the attention forward once more in backward and keeps memory at sdpa's
level, at a price that grows with the row length (bench/RESULTS.md, round 4). Values are those
of `eager`: the same function runs, only what autograd keeps differs. When a run uses it is the
speed plan's rule (`lorakit.plan.speed`).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lorakit.errors import LorakitError
from lorakit.plan.speed import RECOMPUTE_ATTENTION as RECOMPUTE


def _eager_of(module: nn.Module):
    """The eager attention function of `module`'s architecture (transformers defines one per
    modeling file, next to the attention class)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"{type(module).__module__} defines no eager_attention_forward")
    return fn


def eager_recompute(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """Eager attention, probabilities recomputed in backward. query (B, H, T, d), key and value
    (B, H_kv, S, d), attention_mask as transformers' eager mask; returns (B, T, H, d) and no weights.
    """
    eager = _eager_of(module)

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return eager(module, q, k, v, mask, **kwargs)[0]

    if not torch.is_grad_enabled() or not (query.requires_grad or key.requires_grad or value.requires_grad):
        return core(query, key, value, attention_mask), None
    # the RNG state is kept so attention dropout draws the same mask when recomputed
    return checkpoint(core, query, key, value, attention_mask, use_reentrant=False), None


def register_attention() -> None:
    """Make `eager_recompute` a name `model.set_attn_implementation` accepts (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(RECOMPUTE, eager_recompute)
    # the mask must be eager's: transformers builds none for a name without a mask function
    AttentionMaskInterface.register(RECOMPUTE, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def use_attention(model: nn.Module, name: str) -> None:
    """Switch the model's attention implementation: transformers' names (eager, sdpa, ...) or
    `eager_recompute`; a name the model cannot use is refused with one line."""
    register_attention()  # idempotent
    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError) as exc:
        raise LorakitError(f"--attention {name}: {type(model).__name__} cannot use it ({exc}); "
                           "leave --attention unset for the model's default") from None
