"""Mixed-adapter batches on a LoRA linear in two matmuls, whatever the number of adapters.

The adapters present in the batch are concatenated once per layer (cached until a factor
changes): ``A_cat = [A_1; A_2; ...]`` (R, in) and ``B_cat = [B_1, B_2, ...]`` (out, R). A
per-row mask (B, R) holds adapter i's scaling on its own R-columns and zeros elsewhere, so
``((x @ A_cat^T) * mask) @ B_cat^T`` gives each row exactly its own ``s_i B_i A_i x``;
base-only rows get a zero row. On a CPU this beats one index_select / matmul / index_add
per adapter per layer: 8 adapters cost about one extra small matmul, not eight.
"""

from __future__ import annotations

import torch


def _signature(layer, names: tuple[str, ...]) -> tuple:
    """Identity and in-place version of every factor: the cache is stale once any of them changes."""
    sig = []
    for n in names:
        a, b = layer.lora_A[n].weight, layer.lora_B[n].weight
        sig.append((n, id(a), a._version, id(b), b._version, layer.scaling[n]))
    return tuple(sig)


def _stacked(layer, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A_cat (R, in), B_cat (out, R), owner (R,): index into `names` of each column)."""
    sig = _signature(layer, names)
    cached = layer.__dict__.get("_rows_stack")
    if cached is None or cached[0] != sig:
        a_cat = torch.cat([layer.lora_A[n].weight.detach() for n in names], 0).contiguous()
        b_cat = torch.cat([layer.lora_B[n].weight.detach() for n in names], 1).contiguous()
        owner = torch.cat([torch.full((layer.r[n],), i) for i, n in enumerate(names)])
        cached = (sig, a_cat, b_cat, owner)
        layer.__dict__["_rows_stack"] = cached  # not a submodule or buffer: never saved
    return cached[1], cached[2], cached[3]


def _row_mask(layer, row_adapters: tuple, names: tuple[str, ...], owner: torch.Tensor) -> torch.Tensor:
    """(B, R): the row's adapter's scaling on that adapter's columns, 0 elsewhere."""
    cached = layer.__dict__.get("_rows_mask")
    if cached is not None and cached[0] == (row_adapters, names):
        return cached[1]
    index = {n: i for i, n in enumerate(names)}
    row_owner = torch.tensor([index.get(n, -1) for n in row_adapters])
    scales = torch.tensor([layer.scaling[n] for n in names], dtype=torch.float32)
    mask = (row_owner[:, None] == owner[None, :]) * scales[owner.clamp(min=0)][None, :]
    layer.__dict__["_rows_mask"] = ((row_adapters, names), mask)
    return mask


def fast_path_ok(layer, names: tuple[str, ...]) -> bool:
    """The concatenated form is exact for plain LoRA at inference (no DoRA, no dropout, no gradients)."""
    if any(n in layer.lora_magnitude_vector for n in names):
        return False
    if layer.training and any(not isinstance(layer.lora_dropout[n], torch.nn.Identity) for n in names):
        return False
    return not (torch.is_grad_enabled() and any(layer.lora_A[n].weight.requires_grad
                                                or layer.lora_B[n].weight.requires_grad for n in names))


def mixed_linear_delta(layer, x: torch.Tensor, row_adapters: list[str | None]) -> torch.Tensor | None:
    """What each row's own adapter adds to ``base_layer(x)``; x (B, ..., in) -> (B, ..., out) or None.

    Returns None when no row runs an adapter of this layer. Call only when `fast_path_ok`.
    """
    names = tuple(sorted({n for n in row_adapters if n is not None and n in layer.lora_A}))
    if not names:
        return None
    a_cat, b_cat, owner = _stacked(layer, names)
    mask = _row_mask(layer, tuple(row_adapters), names, owner).to(a_cat.dtype)
    h = torch.matmul(x.to(a_cat.dtype), a_cat.T)
    h = h * mask.view(mask.shape[0], *([1] * (h.dim() - 2)), mask.shape[1])
    return torch.matmul(h, b_cat.T)
