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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.atomic import atomic_dir, atomic_write
from lorakit.errors import LorakitError, one_line, short_repr

# settings that must match to continue a run (max_steps, eval and save cadence may change)
RESUME_KEYS = ("model", "method", "rank", "alpha", "targets", "rslora", "dropout", "batch_size", "grad_accum",
               "max_seq_len", "packing", "mask_prompt", "seed", "lr", "schedule", "warmup", "weight_decay",
               "precision", "virtual_tokens", "prefix_projection", "encoder_hidden_size", "prompt_init",
               "prompt_init_text")
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")


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


def _step_of(path: Path) -> int | None:
    """N of a ``step-N`` directory name, or None."""
    head, _, digits = path.name.partition("-")
    return int(digits) if head == "step" and digits.isdigit() and len(digits) < 19 else None


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Every ``step-N`` directory under `ckpt_root` that holds all of a checkpoint's files, oldest first."""
    found = [p for p in ckpt_root.glob("step-*") if _step_of(p) is not None and p.is_dir()
             and all((p / name).is_file() for name in CHECKPOINT_FILES)]
    return sorted(found, key=_step_of)


def how_to_go_on(ckpt_root: Path, broken: Path | None = None) -> str:
    """What to do instead of resuming from `broken`: the newest other complete checkpoint, or start fresh."""
    others = [p for p in complete_checkpoints(ckpt_root) if broken is None or p.name != broken.name]
    if broken is not None and _step_of(broken) is not None:
        others = [p for p in others if _step_of(p) < _step_of(broken)] or others
    if others:
        return f"resume from the earlier checkpoint with --resume {others[-1]}, or start fresh (a new --out)"
    return "start fresh with a new --out"


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint ``latest.json`` names (None if there is no latest.json).

    A latest.json that cannot be read, or that names a checkpoint that is not there, is refused
    in one line saying which complete checkpoint is left to resume from.
    """
    pointer = ckpt_root / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text(encoding="utf-8")).get("checkpoint")
    except (OSError, ValueError, RecursionError, AttributeError):
        name = None
    if not isinstance(name, str) or Path(name).name != name or _step_of(Path(name)) is None:
        raise LorakitError(f"{pointer}: corrupt (it names no step-N checkpoint); {how_to_go_on(ckpt_root)}")
    path = ckpt_root / name
    if not path.is_dir():
        raise LorakitError(f"{pointer}: names {name}, which does not exist; {how_to_go_on(ckpt_root, path)}")
    return path


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse to resume with settings that change what the checkpoint means."""
    # a key the checkpoint does not record is older than the setting (precision: written since 2026-11-29)
    diff = [k for k in RESUME_KEYS if k in saved and saved[k] != current.get(k)]
    if diff:
        k = diff[0]
        raise LorakitError(f"{where}: was trained with {k}={saved.get(k)!r}, this run has {k}={current.get(k)!r}"
                           f"{f' (and {len(diff) - 1} more)' if len(diff) > 1 else ''}; "
                           "resume with the same settings or start a new --out")


def _bad(file: Path, problem: str) -> LorakitError:
    """One line: the file, what is wrong with it, and the checkpoint to resume from instead."""
    checkpoint = file if file.is_dir() else file.parent
    return LorakitError(f"{file}: {problem}; {how_to_go_on(checkpoint.parent, checkpoint)}")


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise _bad(file, "missing (the checkpoint is incomplete)")
    try:
        return load_file(file)
    # safetensors' own error, or what torch raises building a tensor from a header it accepted
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise _bad(file, f"truncated or corrupt ({one_line(exc, 120)})") from None


def _read_state(path: Path) -> dict[str, Any]:
    """trainer_state.json, with every field `load_checkpoint` and the training loop use checked for type."""
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise _bad(path, "not a lorakit checkpoint (no trainer_state.json)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise _bad(state_file, f"not valid JSON ({one_line(exc, 80)})") from None
    if not isinstance(state, dict):
        raise _bad(state_file, "not a JSON object")
    opt, batches = state.get("optimizer"), state.get("batches")
    fields = {
        "step": _is_count(state.get("step")),
        "tokens": _is_count(state.get("tokens")),
        "config": isinstance(state.get("config", {}), dict),
        "batches": isinstance(batches, dict) and all(_is_count(batches.get(k)) for k in ("epoch", "index")),
        "optimizer": isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
        and isinstance(opt.get("scalars"), dict) and all(isinstance(v, dict) for v in opt["scalars"].values()),
        "scheduler": isinstance(state.get("scheduler"), dict),
        "python_rng": isinstance(state.get("python_rng"), list),
        "best_eval": isinstance(state.get("best_eval", 0.0), (int, float))
        and not isinstance(state.get("best_eval"), bool),
    }
    wrong = [k for k, ok in fields.items() if not ok]
    if wrong:
        raise _bad(state_file, f"field '{wrong[0]}' is missing or of the wrong type "
                               f"({short_repr(state.get(wrong[0]))})")
    if _step_of(path) is not None and state["step"] != _step_of(path):
        raise _bad(state_file, f"says step {state['step']} but the directory is {path.name}")
    return state


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _alike(saved: Any, current: Any) -> bool:
    """Whether a saved state value has the JSON shape of the current one (numbers alike, lists by length;
    None matches anything, since which options torch leaves unset differs between versions)."""
    if saved is None or current is None:
        return True
    if isinstance(current, bool) or isinstance(saved, bool):
        return isinstance(current, bool) and isinstance(saved, bool)
    if isinstance(current, (int, float)):
        return isinstance(saved, (int, float))
    if isinstance(current, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(current) and all(map(_alike, saved, current))
    return isinstance(saved, type(current))


def _unlike(saved: dict, current: dict) -> str | None:
    """The first key both states hold in different shapes (a key one torch version lacks is not checked)."""
    return next((key for key, value in current.items() if key in saved and not _alike(saved[key], value)), None)


def _optimizer_state(path: Path, meta: dict, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state dict the checkpoint holds, checked against `optimizer`'s parameters."""
    file = path / "optimizer.safetensors"
    groups = optimizer.state_dict()["param_groups"]
    saved_groups = meta["param_groups"]
    if len(saved_groups) != len(groups) or any(not isinstance(g, dict) for g in saved_groups):
        raise _bad(path / "trainer_state.json", "its optimizer parameter groups do not match this run's")
    for saved, current in zip(saved_groups, groups):
        # hyper-parameters may differ only where the settings allow it; their types may not
        key = _unlike(saved, current) or ("params" if saved.get("params") != current["params"] else None)
        if key is not None:
            raise _bad(path / "trainer_state.json", f"optimizer setting '{key}' is of the wrong type "
                                                    f"({short_repr(saved.get(key))})")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    slots: dict[int, dict[str, Any]] = {}
    try:
        for i, s in meta["scalars"].items():
            slots[int(i)] = dict(s)
        for key, value in _tensors(file).items():
            idx, name = key.split(".", 1)
            slots.setdefault(int(idx), {})[name] = value
    except ValueError:
        raise _bad(file, "holds a slot that is not numbered like this optimizer's") from None
    for idx, slot in slots.items():
        if not 0 <= idx < len(params):
            raise _bad(file, f"holds state for parameter {idx}, but the optimizer has {len(params)}")
        for name, value in slot.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[idx].shape:
                raise _bad(file, f"{idx}.{name} has shape {tuple(value.shape)}, its parameter "
                                 f"{tuple(params[idx].shape)}")
    return {"state": slots, "param_groups": meta["param_groups"]}


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    config: dict[str, Any]) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the trainer state.

    Every file is read and checked before anything is restored, and a restore step that still
    fails (the optimizer or scheduler refusing its state) is undone, so a failed resume leaves
    the model, optimizer, scheduler and RNG as they were.
    """
    state = _read_state(path)
    check_compatible(state.get("config", {}), config, path)
    params = dict(model.named_parameters())
    trainable = _tensors(path / "trainable.safetensors")
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(trainable) != expected:
        raise _bad(path / "trainable.safetensors",
                   "its trainable weights do not match this model's; was it another model?")
    for name, value in trainable.items():
        if value.shape != params[name].shape:
            raise _bad(path / "trainable.safetensors",
                       f"{name} has shape {tuple(value.shape)}, model needs {tuple(params[name].shape)}")
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise _bad(path / "trainable.safetensors", f"{name} is not finite floating point")
    opt_state = _optimizer_state(path, state["optimizer"], optimizer)
    key = _unlike(state["scheduler"], {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"})
    if key is not None:
        raise _bad(path / "trainer_state.json", f"schedule state '{key}' is of the wrong type "
                                                f"({short_repr(state['scheduler'].get(key))})")
    rng = _tensors(path / "rng.safetensors").get("torch_cpu")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise _bad(path / "rng.safetensors", "holds no CPU random-generator state")
    undo = (optimizer.state_dict(), dict(scheduler.__dict__), torch.get_rng_state(), random.getstate())
    try:
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(rng)
        random.setstate(_tuples(state["python_rng"]))
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        optimizer.load_state_dict(undo[0])
        scheduler.__dict__.clear()
        scheduler.__dict__.update(undo[1])
        torch.set_rng_state(undo[2])
        random.setstate(undo[3])
        raise _bad(path / "trainer_state.json",
                   f"optimizer, schedule or RNG state unusable ({one_line(exc, 120)})") from None
    with torch.no_grad():  # last: nothing after this can fail
        for name, value in trainable.items():
            params[name].copy_(value)
    return state
