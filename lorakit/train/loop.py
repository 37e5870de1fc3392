"""The training loop, top to bottom: accumulate, clip, step, log, evaluate, checkpoint.

Loss, batches, optimizer, schedule and callbacks are passed in. With data parallelism the
gradients are summed across processes and every loss is divided by the *global* number of
labelled tokens, so N processes at batch B give the same update as one at batch N x B.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorakit.errors import LorakitError
from lorakit.train.loss import IGNORE
from lorakit.runtime.memory import rss_mb


@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    best_eval: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Hooks:
    """What the loop calls out to; each gets ``(step, metrics)``."""

    on_step: list[Callable] = field(default_factory=list)
    on_eval: list[Callable] = field(default_factory=list)
    evaluate: Callable[[], dict[str, float]] | None = None
    save: Callable[[int], None] | None = None  # resumable checkpoint
    save_best: Callable[[int], None] | None = None  # the weights with the lowest eval loss so far
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None


def _input_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens a batch feeds the model (padding not counted): what a classification step computes on,
    where its labelled count is one per example."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def train_loop(model: nn.Module, batches, loss_fn, optimizer: torch.optim.Optimizer, scheduler, *,
               max_steps: int, grad_accum: int, max_grad_norm: float, eval_every: int, save_every: int,
               hooks: Hooks, state: LoopState) -> LoopState:
    """Run optimizer steps from ``state.step + 1`` to `max_steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    while state.step < max_steps:
        started = time.perf_counter()
        micro = [next(batches) for _ in range(grad_accum)]
        n_local = torch.tensor(float(sum(int((b["labels"] != IGNORE).sum()) for b in micro)))
        n_global = hooks.all_reduce(n_local.clone()) if hooks.all_reduce else n_local
        seen = sum(_input_tokens(b) for b in micro)  # this process's, for throughput only
        loss_sum = 0.0
        for batch in micro:
            loss, _ = loss_fn(model, batch)
            (loss / n_global.clamp(min=1)).backward()
            loss_sum += float(loss.detach())
        if hooks.all_reduce:
            _sum_gradients(params, hooks.all_reduce)
            loss_sum = float(hooks.all_reduce(torch.tensor(loss_sum)))
        mean_loss = loss_sum / max(float(n_global), 1.0)
        if not math.isfinite(mean_loss):
            raise LorakitError(f"loss became {mean_loss} at step {state.step + 1}; training stopped and the last "
                               "checkpoint was kept. Lower --lr or check the data")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += int(n_global)
        step_time = time.perf_counter() - started
        metrics = {"loss": mean_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "tokens": int(n_global), "tokens_per_s": float(n_global) / step_time, "step_time": step_time,
                   "input_tokens_per_s": seen / step_time,
                   "rss_mb": rss_mb()}
        for cb in hooks.on_step:
            cb(state.step, metrics)
        if hooks.evaluate and ((eval_every and state.step % eval_every == 0) or state.step == max_steps):
            result = hooks.evaluate()
            for cb in hooks.on_eval:
                cb(state.step, result)
            if result["eval_loss"] < state.best_eval:
                state.best_eval = result["eval_loss"]
                if hooks.save_best:
                    hooks.save_best(state.step)
        if hooks.save and ((save_every and state.step % save_every == 0) or state.step == max_steps):
            hooks.save(state.step)
    return state


def _sum_gradients(params: list[nn.Parameter], all_reduce) -> None:
    """One all-reduce of every gradient, flattened (cheaper than one call per tensor)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce(torch.cat([g.reshape(-1) for g in grads]))
    at = 0
    for p, g in zip(params, grads):
        p.grad = flat[at:at + g.numel()].view_as(g)
        at += g.numel()
