"""Activations recomputed in backward instead of stored: a registry of recipes for saved tensors.

A module that produces an activation cheaply from tensors autograd keeps anyway (a norm's
output from its input; a SwiGLU product from its two factors) registers a recipe for it.
While `recomputing()` is active, any autograd node that wants to save a registered tensor
(or a contiguous view of all of it) stores the recipe instead; backward runs the recipe.
The recipes repeat the forward's own ops in the same order, so values are bitwise equal.
Outside `recomputing()`, or for tensors never registered, nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator

import torch

_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("lorakit_recompute", default=None)


class _Recipe:
    """One registration; shared by every node that saves the tensor, so it is recomputed once.

    The result is kept from the first unpack until every saving node has unpacked it (the q, k
    and v projections all save the same norm output), then dropped.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: tuple) -> None:
        self.fn, self.inputs = fn, inputs
        self.pending = 0
        self.value: torch.Tensor | None = None

    def take(self, shape: torch.Size) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad():
                self.value = self.fn(*self.inputs)
        value = self.value.view(shape)
        self.pending -= 1
        if self.pending <= 0:
            self.value = None
        return value


def register(out: torch.Tensor, fn: Callable[..., torch.Tensor], *inputs) -> None:
    """Recompute `out` as ``fn(*inputs)`` if a backward node saves it (no-op when inactive).

    `fn(*inputs)` must give `out` bitwise; `inputs` are held by the recipe until backward.
    """
    recipes = _ACTIVE.get()
    if recipes is not None and out.requires_grad:
        # the weak reference tells a live registration from a dead one whose memory was reused
        # the version tells an unchanged tensor from one modified in place since
        recipes[out.untyped_storage().data_ptr()] = (weakref.ref(out), out._version, _Recipe(fn, inputs))


def _pack(recipes: dict, t: torch.Tensor):
    entry = recipes.get(t.untyped_storage().data_ptr())
    if entry is None:
        return t
    ref, version, recipe = entry
    out = ref()
    if (out is None or t._version != version or not t.is_contiguous() or t.numel() != out.numel()
            or t.storage_offset() != out.storage_offset() or t.dtype != out.dtype):
        return t
    recipe.pending += 1
    return recipe, t.shape


def _unpack(packed):
    return packed[0].take(packed[1]) if isinstance(packed, tuple) else packed


@contextlib.contextmanager
def recomputing() -> Iterator[None]:
    """Within this block, saved registered activations become recipes (see module doc)."""
    recipes: dict = {}
    token = _ACTIVE.set(recipes)
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: _pack(recipes, t), _unpack):
            yield
    finally:
        _ACTIVE.reset(token)
        recipes.clear()
