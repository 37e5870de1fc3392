"""Learning-rate schedules: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """Multiplier of the peak LR after `step` optimizer steps (step 0 = before the first)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int):
    """A `LambdaLR` following `lr_factor` (its state_dict is plain JSON)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, schedule, warmup, total))
