"""Predicted peak memory of a training run, with its breakdown, before anything is loaded.

Assumptions (each a parameter or a constant documented here):

* the run's speed plan (`lorakit.plan.speed`) says what runs: fp32 or bf16 compute, lean layers,
  bf16-held frozen linears (`frozen_bf16`: embeddings, norms and the head stay fp32; `weights`
  counts them exactly), checkpointing, --release-memory. fp32 master weights; AdamW with two
  fp32 states per trained weight. Activations are counted as fp32 eager training's, which bf16
  autocast and --compile undercut (`BF16_NOTE`);
* ``qlora``: transformer-block linears stored as NF4 (4.127 bits per weight, see
  `lorakit.quant.nf4`), an untied output head in int8 (one fp32 scale per row), embeddings and
  norms in fp32; ``lora``: all weights fp32;
* the loss is a chunked cross entropy over `loss_chunk_tokens` tokens at a time (None: the
  trainer's default, `lorakit.plan.activations.loss_chunk_tokens`);
* with --release-memory, large tensors are returned to the OS when freed
  (`lorakit.runtime.memory.lean_malloc`), so resident memory follows live tensors; without it
  (the default: page faults on every fresh tensor cost speed), the C heap keeps freed
  activations and its fragments resident: ``heap`` = `HEAP_RETAINED` x (activations + logits);
* ``qlora`` loads with `lorakit.quant.load_quantized`, which leaves fp32 tensors it does not
  quantize as views of the checkpoint's file mapping; an untied input embedding is only read a
  row at a time, yet a good part of it stays resident (which pages the kernel keeps is not ours
  to predict; bench/RESULTS_quant.md, round 2). It is counted in full, erring high (a plan that
  says "fits" wrongly costs more than a cautious one); ``mapped`` shows how much of the weights
  it is;
* everything counted is alive together at the end of backward (gradients and optimizer state
  exist from the first optimizer step on), a slight over-estimate for the first step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import psutil

from lorakit.errors import LorakitError
from lorakit.plan.activations import FP32, activation_bytes, loss_bytes
from lorakit.plan.arch import ArchFacts, arch_facts, load_config
from lorakit.plan.speed import SpeedPlan, resolve_speed

METHODS = ("full", "lora", "qlora")

# Resident memory of Python + torch + transformers + lorakit after the first forward/backward
# (oneDNN/OpenMP state), before any model (bench/RESULTS_quant.md).
RUNTIME_BYTES = 420_000_000

# NF4 storage per weight in bytes: 4 bits + int8 absmax per 64 + fp32 scale per 64*256 (QLoRA sec. 3)
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)

# Freed activation memory glibc's heap keeps resident without --release-memory, as a share of the
# planned activations + logits: peak RSS without minus with release, the largest share measured
# over three shapes (bench/RESULTS.md, round 3): a plan that says "fits" wrongly costs more.
HEAP_RETAINED = 0.75

FITS, TIGHT, NO_FIT = "fits", "tight", "won't fit"

BF16 = 2
# how far below the plan a bf16 / compiled run's peak lands: bench/RESULTS.md, round 4
BF16_NOTE = ("activations planned as fp32 eager training's; bf16 and --compile keep less "
             "(bench/RESULTS.md): the plan errs high")


@dataclass
class Estimate:
    """Predicted peak resident memory of one training step, in bytes, by component."""

    runtime: int
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    available: int
    heap: int = 0
    mapped: int = 0
    method: str = "lora"
    trainable_params: int = 0
    note: str = ""

    @property
    def total(self) -> int:
        """Predicted peak resident bytes."""
        return (self.runtime + self.weights + self.adapter + self.gradients + self.optimizer
                + self.activations + self.logits + self.heap)

    @property
    def verdict(self) -> str:
        """'fits' below 90% of available memory, 'tight' below 100%, else "won't fit"."""
        if self.total <= 0.9 * self.available:
            return FITS
        return TIGHT if self.total <= self.available else NO_FIT

    def format(self) -> str:
        """A table of the breakdown, the total and the verdict."""
        rows = [(f.name, getattr(self, f.name)) for f in fields(self)
                if f.name not in ("available", "mapped", "method", "trainable_params", "note")
                and not (f.name == "heap" and not self.heap)]
        lines = [f"{'component':<12} {'GB':>8}"]
        lines += [f"{name:<12} {value / 1e9:>8.3f}" for name, value in rows]
        lines.append(f"{'total':<12} {self.total / 1e9:>8.3f}")
        if self.mapped:
            lines.append(f"{'(mapped)':<12} {self.mapped / 1e9:>8.3f}  of the weights: input embedding, file-backed, "
                         "read per token (counted in full)")
        if self.heap:
            lines.append(f"{'(heap)':<12} {'':>8}  freed activations the C heap keeps resident; --release-memory "
                         "returns them, at a cost in speed")
        if self.note:
            lines.append(f"{'(note)':<12} {'':>8}  {self.note}")
        lines.append(f"{'available':<12} {self.available / 1e9:>8.3f}")
        lines.append(f"verdict: {self.verdict} ({self.method}, {self.trainable_params:,} trainable parameters)")
        return "\n".join(lines)


def mapped_bytes(arch: ArchFacts, method: str) -> int:
    """Bytes of the input embedding left file-backed by `load_quantized` (fp32 checkpoints, untied)."""
    return FP32 * arch.input_embedding_params if method == "qlora" and arch.checkpoint_fp32 else 0


def weight_bytes(arch: ArchFacts, method: str, frozen_bf16: bool = False) -> int:
    """Resident bytes of the frozen or trained base weights (`frozen_bf16`: the frozen linears in bf16)."""
    if frozen_bf16:
        held = arch.linear_params + arch.linear_bias_params
        return FP32 * (arch.params - held) + BF16 * held
    if method != "qlora":
        return FP32 * arch.params
    # `lorakit train --method qlora` holds an untied head in int8 with one fp32 scale per row
    head = arch.untied_head_params
    dense = arch.params - arch.linear_params - head
    int8_head = head + (FP32 * arch.vocab if head else 0)  # one scale per row: a row per token
    return int(FP32 * dense + NF4_BYTES_PER_WEIGHT * arch.linear_params + int8_head)


def estimate(config_or_model_spec, method: str = "lora", batch_size: int = 1, seq_len: int = 512, rank: int = 16,
             targets: list[str] | str = "all-linear", loss_chunk_tokens: int | None = None, lora_dropout: float = 0.0,
             available: int | None = None, speed: SpeedPlan | None = None) -> Estimate:
    """Predict the peak memory of training `config_or_model_spec` (a transformers config, a
    config.json path, or a model alias/directory) with `method` ('full', 'lora', 'qlora').
    `speed`: the run's resolved speed plan (`lorakit.plan.speed.resolve_speed`; the trainer passes
    its own); default: the trainer's defaults for `method` on a CPU."""
    if method not in METHODS:
        raise LorakitError(f"unknown method {method!r}; use one of: {', '.join(METHODS)}")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("rank", rank),
                        ("loss_chunk_tokens", loss_chunk_tokens)):
        if value is not None and value < 1:
            raise LorakitError(f"{name} must be a positive integer, got {value}")
    config = load_config(config_or_model_spec)
    if speed is None:
        import torch

        speed = resolve_speed(model_type=config.model_type, method=method, device=torch.device("cpu"))
    arch = arch_facts(config, rank, targets, method)
    trainable = arch.params if method == "full" else arch.adapter_params
    tokens = batch_size * seq_len
    activations = activation_bytes(arch, method, tokens, rank, speed.grad_checkpoint, lora_dropout, speed.lean)
    logits = loss_bytes(arch, tokens, loss_chunk_tokens)
    return Estimate(
        runtime=RUNTIME_BYTES,
        weights=weight_bytes(arch, method, speed.frozen_bf16),
        adapter=0 if method == "full" else FP32 * arch.adapter_params,
        gradients=FP32 * trainable,
        optimizer=2 * FP32 * trainable,
        activations=activations,
        logits=logits,
        heap=0 if speed.release_memory else int(HEAP_RETAINED * (activations + logits)),
        available=psutil.virtual_memory().available if available is None else available,
        mapped=mapped_bytes(arch, method),
        method=method,
        trainable_params=trainable,
        note=BF16_NOTE if speed.precision == "bf16" or speed.compile else "",
    )
