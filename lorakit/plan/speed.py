"""The resolved speed plan of a training run: what it will finally do, decided in one place.

The trainer's speed and memory options interact: `--compile` replaces fused projections and lean
layers (their Python-side caching breaks dynamo's graphs), lean layers are pointless under
gradient checkpointing (which discards those activations anyway), bf16-held frozen weights are
for LoRA and prefix/prompt tuning only, prefix tuning takes no gradient checkpointing, compiled bf16 training on a CPU defaults to `eager_recompute` attention, and the
family registry says where fusing and lean layers apply at all. `resolve_speed` applies every
such rule and nothing else does: the trainer applies its result (`lorakit.train.speed`), the
memory planner and the benchmark read it, and it is printed in the run summary and saved in
``train_config.yaml``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lorakit.families import family_of
from lorakit.runtime.precision import resolve_precision

RECOMPUTE_ATTENTION = "eager_recompute"  # registered by lorakit.train.attention
INT8_METHODS = ("lora", "dora", "head")  # int8 GEMMs serve frozen projections: full trains them, QLoRA's are NF4
# every projection of the base is frozen and plain (no LoRA wrapper): fusing, lean layers and bf16-held
# weights apply as they do under LoRA; the trained prefix/prompt is a separate module none of them touch
FROZEN_BASE_METHODS = ("lora", "prefix", "prompt")


@dataclass(frozen=True)
class SpeedPlan:
    """What a run does for speed and memory, resolved for one model on one machine."""

    device: str  # 'cpu', 'cuda', 'mps'
    precision: str  # 'fp32', 'bf16' or 'int8' (auto resolved on this machine)
    attention: str | None  # an attention implementation to switch to; None keeps the model's own
    compile: bool  # torch.compile each decoder layer
    fuse: bool  # one GEMM per group of frozen projections that read one input
    lean: bool  # recompute norm outputs and the gated product in backward
    frozen_bf16: bool  # hold frozen projection weights in bf16 (same bits autocast would use)
    own_weights: bool  # copy weights out of the file mapping, dropping its pages
    compiled_loss: bool  # the chunked loss's softmax as one compiled kernel
    grad_checkpoint: bool
    release_memory: bool  # freed memory back to the OS at once (glibc)
    notes: tuple[str, ...] = field(default=())  # why an option asked for is off

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for train_config.yaml and summary.json."""
        return {**asdict(self), "notes": list(self.notes)}

    def format(self) -> str:
        """One line of what is on, then one line per note."""
        on = [name for name in ("compile", "fuse", "lean", "frozen_bf16", "own_weights", "compiled_loss",
                                "grad_checkpoint", "release_memory") if getattr(self, name)]
        head = (f"speed plan: {self.device}, {self.precision}, attention {self.attention or 'model default'}; "
                f"on: {', '.join(on) or 'nothing'}")
        return "\n".join([head, *(f"  {note}" for note in self.notes)])


def for_memory(method: str, asked: bool | None) -> bool:
    """An option that trades speed for memory, `asked` or (None, auto) on for QLoRA alone: a method
    chosen for memory. Its recipe checkpoints activations (Dettmers et al., 2023; PEFT's
    `prepare_model_for_kbit_training` does too), and returning freed memory at once is what brings
    a 1.5B model's peak near its weights (issue 18; bench/RESULTS_quant.md)."""
    return method == "qlora" if asked is None else asked


def resolve_speed(*, model_type: str | None, method: str, device: Any, precision: str = "fp32",
                  compile: bool = False, fuse: bool = True, lean_memory: bool = True, attention: str | None = None,
                  grad_checkpoint: bool | None = None, release_memory: bool | None = None) -> SpeedPlan:
    """The speed plan for training a `model_type` model with `method` on `device` (a torch.device),
    from the trainer's options of the same names (`TrainConfig.speed_settings()`). `grad_checkpoint`
    and `release_memory` None (auto): `for_memory` decides."""
    family = family_of(model_type)
    grad_checkpoint, release_memory = for_memory(method, grad_checkpoint), for_memory(method, release_memory)
    resolved = resolve_precision(precision, device, int8=method in INT8_METHODS)
    notes: list[str] = []
    if grad_checkpoint and method == "prefix":  # `lorakit train` refuses it asked for; other callers get the note
        notes.append("grad_checkpoint off: prefix tuning's prefix is a KV cache the recomputed layers would "
                     "extend a second time")
        grad_checkpoint = False

    def why_off(option: str, asked: bool, reasons: list[tuple[bool, str]]) -> bool:
        """`asked`, unless one of `reasons` holds: then off, with that reason noted."""
        if not asked:
            return False
        for holds, reason in reasons:
            if holds:
                notes.append(f"{option} off: {reason}")
                return False
        return True

    fused = why_off("fuse", fuse, [
        (compile, "--compile replaces it"),
        (method == "full", "full fine-tuning trains the projections"),
        (method == "qlora", "the frozen projections are quantized"),
        (not family.fuse, family.reason("fuse")),
    ])
    lean = why_off("lean", lean_memory, [
        (compile, "--compile replaces it"),
        (grad_checkpoint, "gradient checkpointing discards those activations anyway"),
        (not family.lean, family.reason("lean")),
    ])
    if attention is None and compile and resolved == "bf16" and device.type == "cpu" and not grad_checkpoint:
        # eager attention's matmuls beat the CPU sdpa kernel under compiled bf16; recomputing its
        # probabilities keeps memory at sdpa's level (bench/RESULTS.md, round 4)
        attention = RECOMPUTE_ATTENTION
        notes.append("attention eager_recompute: the default for compiled bf16 training on a CPU")
    return SpeedPlan(
        device=device.type, precision=resolved, attention=attention, compile=compile, fuse=fused, lean=lean,
        # autocast casts frozen weights to bf16 at every use anyway; DoRA's norms read the base weight
        # in fp32 math, head-only saves the whole model, full trains every weight, QLoRA's are quantized
        frozen_bf16=resolved == "bf16" and method in FROZEN_BASE_METHODS,
        own_weights=fused and lean_memory and resolved != "int8",  # int8 keeps int8 copies, not fp32 ones
        # fp32 logits need no casts, and the chunked loss's in-place steps beat the kernel there
        compiled_loss=compile and resolved == "bf16",
        grad_checkpoint=grad_checkpoint, release_memory=release_memory, notes=tuple(notes),
    )
