"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and data position.

Everything is tensors in safetensors plus JSON (no pickle). A checkpoint is written into
a temporary directory and renamed into place, then ``latest`` is replaced atomically, so
a crash at any moment leaves the previous checkpoint complete and pointed to.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.atomic import atomic_dir, atomic_write
from lorakit.errors import LorakitError

# settings that must match to continue a run (max_steps, eval and save cadence may change)
RESUME_KEYS = ("model", "method", "rank", "alpha", "targets", "rslora", "dropout", "batch_size", "grad_accum",
               "max_seq_len", "packing", "mask_prompt", "seed", "lr", "schedule", "warmup", "weight_decay",
               "precision")


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value.contiguous() for idx, slots in state["state"].items()
               for key, value in slots.items() if isinstance(value, torch.Tensor)}
    scalars = {str(idx): {k: v for k, v in slots.items() if not isinstance(v, torch.Tensor)}
               for idx, slots in state["state"].items()}
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(ckpt_root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``ckpt_root/step-NNNNNN`` and point ``ckpt_root/latest`` at it."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, tmp / "trainable.safetensors")
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file({"torch_cpu": torch.get_rng_state()}, tmp / "rng.safetensors")
        _write_json(tmp / "trainer_state.json", {
            **trainer_state, "step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
            "python_rng": _jsonable(random.getstate()),
        })
    _write_json(ckpt_root / "latest.json", {"checkpoint": final.name})
    for old in sorted(ckpt_root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _jsonable(obj: Any) -> Any:
    return [_jsonable(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _tuples(obj: Any) -> Any:
    return tuple(_tuples(x) for x in obj) if isinstance(obj, list) else obj


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint ``latest.json`` names (None if there is none)."""
    pointer = ckpt_root / "latest.json"
    if not pointer.is_file():
        return None
    path = ckpt_root / json.loads(pointer.read_text())["checkpoint"]
    return path if path.is_dir() else None


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse to resume with settings that change what the checkpoint means."""
    # a key the checkpoint does not record is older than the setting (precision: written since 2026-11-29)
    diff = [k for k in RESUME_KEYS if k in saved and saved[k] != current.get(k)]
    if diff:
        k = diff[0]
        raise LorakitError(f"{where}: was trained with {k}={saved.get(k)!r}, this run has {k}={current.get(k)!r}"
                           f"{f' (and {len(diff) - 1} more)' if len(diff) > 1 else ''}; "
                           "resume with the same settings or start a new --out")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    config: dict[str, Any]) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the trainer state."""
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise LorakitError(f"{path}: not a lorakit checkpoint (no trainer_state.json)")
    state = json.loads(state_file.read_text())
    check_compatible(state.get("config", {}), config, path)
    params = dict(model.named_parameters())
    trainable = load_file(path / "trainable.safetensors")
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(trainable) != expected:
        raise LorakitError(f"{path}: its trainable weights do not match this model's; was it another model?")
    with torch.no_grad():
        for name, value in trainable.items():
            if value.shape != params[name].shape:
                raise LorakitError(f"{path}: {name} has shape {tuple(value.shape)}, model needs {tuple(params[name].shape)}")
            params[name].copy_(value)
    opt_tensors = load_file(path / "optimizer.safetensors")
    meta = state["optimizer"]
    slots: dict[int, dict[str, Any]] = {int(i): dict(s) for i, s in meta["scalars"].items()}
    for key, value in opt_tensors.items():
        idx, name = key.split(".", 1)
        slots.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch_cpu"])
    random.setstate(_tuples(state["python_rng"]))
    return state
