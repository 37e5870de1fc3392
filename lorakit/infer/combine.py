"""Weighted combinations of loaded adapters, created as a new named adapter.

- ``linear``: the update is exactly ``sum_i w_i * s_i * B_i A_i``. It is stored by
  concatenation (rank = sum of ranks): ``A = [A_1; A_2; ...]``, ``B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]``,
  scaling 1, so no approximation is made.
- ``ties``: TIES-merging (Yadav et al. 2023) of the full updates: keep each update's
  largest-magnitude `density` fraction, elect a sign per weight from the weighted sum, average
  the weighted entries that agree with it, then factor the result back to rank `rank` (default:
  the largest input rank) with a truncated SVD.

`plan_combination` only reads tensors (safe beside a running forward); `install_adapter`
changes the model and must run where forwards cannot (the engine's worker thread).
"""

from __future__ import annotations

import torch

from lorakit.adapters import LoraConfig, adapters, add_adapter, delete_adapter
from lorakit.errors import LorakitError

METHODS = ("linear", "ties")
# PEFT's names for the two factors of a Linear and of an Embedding adapter
_FACTORS = {"lora_A.weight": "lora_B.weight", "lora_embedding_A": "lora_embedding_B"}

Plan = tuple[LoraConfig, dict[str, dict[str, torch.Tensor]]]


def _factors(model, name: str, module: str) -> tuple[str, str, torch.Tensor, torch.Tensor, float] | None:
    """(A key, B key, A (r, in), B (out, r), scaling) of adapter `name` on `module`, or None."""
    layer = model.get_submodule(module)
    params = layer.adapter_parameters(name)
    for a_key, b_key in _FACTORS.items():
        if a_key in params:
            return a_key, b_key, params[a_key].detach().float(), params[b_key].detach().float(), layer.scaling[name]
    return None


def _check(model, weights: dict[str, float], method: str) -> None:
    if method not in METHODS:
        raise LorakitError(f"unknown combination method {method!r}: use one of {', '.join(METHODS)}")
    if not weights:
        raise LorakitError("name at least one adapter to combine, with a weight")
    loaded = adapters(model)
    for name, weight in weights.items():
        if name not in loaded:
            raise LorakitError(f"no adapter named {name!r} to combine; loaded: {', '.join(loaded) or 'none'}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not -10 <= weight <= 10:
            raise LorakitError(f"weight of {name!r} must be a number between -10 and 10, got {weight!r}")
        cfg, info = loaded[name].config, loaded[name]
        if cfg.use_dora or info.saved_modules:
            raise LorakitError(f"adapter {name!r} uses DoRA or modules_to_save, which a weighted sum cannot express; "
                               "combine plain LoRA adapters only")


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the `density` fraction of entries with the largest magnitude."""
    k = max(1, int(round(density * delta.numel())))
    if k >= delta.numel():
        return delta
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return delta * (delta.abs() >= threshold)


def _ties(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    stacked = torch.stack([_trim(d, density) for d in deltas])
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def plan_combination(model, weights: dict[str, float], method: str = "linear", density: float = 0.5,
                     rank: int | None = None) -> Plan:
    """Config and per-module tensors of the combination of `weights` ({adapter: weight})."""
    _check(model, weights, method)
    if method == "ties" and not 0.0 < density <= 1.0:
        raise LorakitError(f"density must be in (0, 1], got {density!r}")
    loaded = adapters(model)
    modules = sorted({m for n in weights for m in loaded[n].modules})
    ranks = {n: loaded[n].config.r for n in weights}
    out_rank = sum(ranks.values()) if method == "linear" else (rank or max(ranks.values()))
    if out_rank < 1 or out_rank > 1024:
        raise LorakitError(f"combined rank must be between 1 and 1024, got {out_rank}")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for module in modules:
        parts = [(n, w, _factors(model, n, module)) for n, w in weights.items()]
        a_key, b_key, a0, b0, _ = next(f for _, _, f in parts if f is not None)
        in_dim, out_dim = a0.shape[1], b0.shape[0]
        if method == "linear":
            a_blocks, b_blocks = [], []
            for n, w, f in parts:
                if f is None:  # this adapter leaves the module alone: zero blocks keep the ranks aligned
                    a_blocks.append(torch.zeros(ranks[n], in_dim))
                    b_blocks.append(torch.zeros(out_dim, ranks[n]))
                else:
                    a_blocks.append(f[2])
                    b_blocks.append(f[3] * (w * f[4]))
            A, B = torch.cat(a_blocks, 0), torch.cat(b_blocks, 1)
        else:
            deltas = [(f[3] @ f[2]) * (w * f[4]) for _, w, f in parts if f is not None]
            merged = _ties(deltas, density)
            r = min(out_rank, *merged.shape)
            U, S, V = torch.svd_lowrank(merged, q=min(r + 8, *merged.shape), niter=4)
            A = torch.zeros(out_rank, in_dim)
            B = torch.zeros(out_dim, out_rank)
            A[:r] = V[:, :r].T
            B[:, :r] = U[:, :r] * S[:r]
        tensors[module] = {a_key: A.contiguous(), b_key: B.contiguous()}
    config = LoraConfig(r=out_rank, alpha=out_rank, target_modules=modules)
    return config, tensors


def install_adapter(model, name: str, plan: Plan) -> None:
    """Add adapter `name` with the planned tensors; on any error the model is left unchanged."""
    config, tensors = plan
    if name in adapters(model):
        raise LorakitError(f"an adapter named {name!r} is already loaded; pick another name or delete it first")
    add_adapter(model, config, name)
    try:
        with torch.no_grad():
            for module, params in tensors.items():
                targets = model.get_submodule(module).adapter_parameters(name)
                for key, value in params.items():
                    targets[key].copy_(value.to(targets[key].dtype))
                    targets[key].requires_grad_(False)
    except BaseException:
        delete_adapter(model, name)
        raise
