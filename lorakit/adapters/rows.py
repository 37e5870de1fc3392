"""Mixed-adapter batches on a LoRA linear in two matmuls, whatever the number of adapters.

The adapters present in the batch are laid side by side: ``A_cat = [A_1; A_2; ...]`` (R, in)
and ``B_cat = [B_1, B_2, ...]`` (out, R). A per-row mask (B, R) holds adapter i's scaling on
its own R-columns and zeros elsewhere, so ``((x @ A_cat^T) * mask) @ B_cat^T`` gives each row
exactly its own ``s_i B_i A_i x``; base-only rows get a zero row. On a CPU this beats one
index_select / matmul / index_add per adapter per layer: 8 adapters cost about one extra
small matmul, not eight.

While serving, the set of adapters in the batch changes whenever a request joins or leaves,
and a prefill runs one adapter between two mixed decode steps. Re-concatenating every
factor each time copied all adapters into fresh tensors (a cost bench/RESULTS_serve.md
records), so each layer keeps one growing stack in preallocated buffers: an adapter
is copied in once, when a batch first needs it, and a batch whose adapters are a subset of
the stack uses it as is (absent adapters get zero mask columns; a batch using less than half
of the stack gets a stack of its own). A deleted adapter leaves unused columns until they
make up half the stack. A batch of a single adapter uses its factors directly, no stack.
"""

from __future__ import annotations

import torch

_GROW = 64  # rank columns the buffers grow by at least (growing copies everything once)


def _factors(layer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, in), B (out, r)) of adapter `name`; plain dict reads, as this runs per layer per step
    and nn.Module.__getattr__ costs microseconds each time."""
    mods = layer._modules
    return (mods["lora_A"]._modules[name]._parameters["weight"],
            mods["lora_B"]._modules[name]._parameters["weight"])


class _Stack:
    """A layer's adapters side by side: ``a[:rank]`` (rank, in) and ``b[:, :rank]`` (out, rank).

    Entries hold the factor tensors themselves (not their ids, which a freed tensor's
    successor may reuse) and their in-place versions, so any change is caught.
    """

    def __init__(self) -> None:
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self.rank = 0
        self.entries: dict[str, tuple] = {}  # name -> (A, A version, B, B version, scaling, start, r)
        self.generation = 0  # bumped whenever columns change, so masks built for old columns go
        self._columns: tuple | None = None  # (generation, owner (R,), scale (R,), index {name: i})
        self._mask: tuple | None = None     # (key, mask)

    def stale(self, layer) -> list[str]:
        """Stacked adapters no longer on `layer` as stacked: deleted, replaced, changed in place or rescaled."""
        mods = layer._modules
        a_mods, b_mods, scaling = mods["lora_A"]._modules, mods["lora_B"]._modules, layer.scaling
        out = []
        for name, (a, a_ver, b, b_ver, s, _, _) in self.entries.items():
            ma, mb = a_mods.get(name), b_mods.get(name)
            if (ma is None or mb is None or ma._parameters["weight"] is not a or mb._parameters["weight"] is not b
                    or a._version != a_ver or b._version != b_ver or scaling.get(name) != s):
                out.append(name)
        return out

    def drop(self, names: list[str]) -> None:
        """Forget `names`; their columns stay as unused gaps (zero in every mask) until a refill."""
        for name in names:
            del self.entries[name]
        self.generation += 1

    @property
    def used(self) -> int:
        """Columns that belong to a stacked adapter (the rest are gaps left by deleted ones)."""
        return sum(e[6] for e in self.entries.values())

    def reset(self) -> None:
        """Forget every entry; the buffers are kept and refilled (no fresh pages to fault in)."""
        self.entries, self.rank = {}, 0
        self.generation += 1

    def append(self, layer, name: str) -> None:
        """Copy adapter `name`'s factors in after the last column, growing the buffers if needed."""
        a, b = _factors(layer, name)
        r = a.shape[0]
        need = self.rank + r
        if self.a is None or self.a.dtype != a.dtype or need > self.a.shape[0]:
            cap = max(need, self.rank + _GROW, 2 * self.rank)
            new_a = a.new_empty(cap, a.shape[1])
            new_b = b.new_empty(b.shape[0], cap)
            if self.rank:
                new_a[: self.rank] = self.a[: self.rank]
                new_b[:, : self.rank] = self.b[:, : self.rank]
            self.a, self.b = new_a, new_b
        self.a[self.rank: need] = a.detach()
        self.b[:, self.rank: need] = b.detach()
        self.entries[name] = (a, a._version, b, b._version, layer.scaling[name], self.rank, r)
        self.rank = need
        self.generation += 1

    def columns(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """(owner (R,): entry index of each column, -1 in gaps; scale (R,): its scaling; {name: entry index})."""
        if self._columns is None or self._columns[0] != self.generation:
            index = {n: i for i, n in enumerate(self.entries)}
            owner = torch.full((self.rank,), -1)
            scale = torch.zeros(self.rank)
            for i, (*_, s, start, r) in enumerate(self.entries.values()):
                owner[start: start + r] = i
                scale[start: start + r] = float(s)
            self._columns = (self.generation, owner, scale, index)
        return self._columns[1], self._columns[2], self._columns[3]

    def mask(self, row_adapters: tuple) -> torch.Tensor:
        """(B, R): the row's adapter's scaling on that adapter's columns, 0 elsewhere (cached per batch)."""
        key = (row_adapters, self.generation)
        if self._mask is not None and self._mask[0] == key:
            return self._mask[1]
        owner, scale, index = self.columns()
        row_owner = torch.tensor([index.get(n, -2) for n in row_adapters])  # -2: no column of this stack
        mask = (row_owner[:, None] == owner[None, :]) * scale[None, :]
        self._mask = (key, mask)
        return mask


def _stack_for(layer, names: tuple[str, ...]) -> _Stack:
    """The layer's stack, checked and holding at least `names` (appended once, when first needed)."""
    stack = layer.__dict__.get("_rows_stack")
    if stack is None:
        stack = layer.__dict__["_rows_stack"] = _Stack()  # not a submodule or buffer: never saved
    stale = stack.stale(layer)
    if stale:
        own = layer._modules["lora_A"]._modules
        if all(n not in own for n in stale):  # only deletions (an unload): leave gaps, copy nothing
            stack.drop(stale)
        if any(n in own for n in stale) or stack.used * 2 < stack.rank:
            # a factor changed in place or was replaced, or gaps fill half the stack: refill from the layer
            dora = layer._modules["lora_magnitude_vector"]._modules
            keep = [n for n in stack.entries if n in own and n not in dora]
            stack.reset()
            for n in keep:
                stack.append(layer, n)
    for n in names:
        if n not in stack.entries:
            stack.append(layer, n)
    return stack


def _subset_stack(layer, names: tuple[str, ...]) -> _Stack:
    """A stack of exactly `names`, for a batch that uses a small part of a large stack."""
    stack = layer.__dict__.get("_rows_subset")
    if stack is None or tuple(stack.entries) != names or stack.rank != stack.used or stack.stale(layer):
        stack = stack or _Stack()
        stack.reset()
        for n in names:
            stack.append(layer, n)
        layer.__dict__["_rows_subset"] = stack
    return stack


def fast_path_ok(layer, names: tuple[str, ...]) -> bool:
    """The concatenated form is exact for plain LoRA at inference (no DoRA, no dropout, no gradients)."""
    dora = layer._modules["lora_magnitude_vector"]._modules
    if any(n in dora for n in names):
        return False
    if layer.training and any(not isinstance(layer.lora_dropout[n], torch.nn.Identity) for n in names):
        return False
    return not (torch.is_grad_enabled() and any(layer.lora_A[n].weight.requires_grad
                                                or layer.lora_B[n].weight.requires_grad for n in names))


def _row_view(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(B, R) or (B,) per-row values shaped to broadcast over h (B, ..., R)."""
    return t.view(t.shape[0], *([1] * (h.dim() - 2)), t.shape[1] if t.dim() == 2 else 1)


def mixed_linear_delta(layer, x: torch.Tensor, row_adapters: list[str | None]) -> torch.Tensor | None:
    """What each row's own adapter adds to ``base_layer(x)``; x (B, ..., in) -> (B, ..., out) or None.

    Returns None when no row runs an adapter of this layer. Call only when `fast_path_ok`.
    """
    own = layer._modules["lora_A"]._modules
    names = tuple(sorted({n for n in row_adapters if n is not None and n in own}))
    if not names:
        return None
    if len(names) == 1:  # one adapter (a prefill, or a single-adapter batch): its own factors, no copy
        (name,) = names
        a, b = _factors(layer, name)
        h = torch.matmul(x.to(a.dtype), a.T)
        s = layer.scaling[name]
        if all(n == name for n in row_adapters):
            h = h * s
        else:
            scale = torch.tensor([s if n == name else 0.0 for n in row_adapters], dtype=h.dtype)
            h = h * _row_view(scale, h)
        return torch.matmul(h, b.T)
    stack = _stack_for(layer, names)
    rank = sum(layer.r[n] for n in names)
    if stack.rank > 2 * rank:  # most of the stack would be zero columns: use just this batch's adapters
        stack = _subset_stack(layer, names)
    mask = stack.mask(tuple(row_adapters)).to(stack.a.dtype)
    h = torch.matmul(x.to(stack.a.dtype), stack.a[: stack.rank].T)
    h = h * _row_view(mask, h)
    return torch.matmul(h, stack.b[:, : stack.rank].T)
