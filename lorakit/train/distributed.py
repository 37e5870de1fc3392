"""Data parallelism under `torchrun`: gloo on CPU, nccl on GPU.

Gradients of the (few) trainable weights are summed with one flattened all-reduce per
optimizer step (see `loop._sum_gradients`), which is what DDP's bucketed all-reduce
computes; the loop divides by the global token count, so results match one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as torch_dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def close(self) -> None:
        if self.world > 1 and torch_dist.is_initialized():
            torch_dist.barrier()
            torch_dist.destroy_process_group()


def _sum(t: torch.Tensor) -> torch.Tensor:
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def init() -> Dist:
    """Join the process group `torchrun` describes in the environment (single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    device = None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device is not None else "gloo")
    return Dist(rank=rank, world=world, device=device, all_reduce=_sum)
