"""The settings `lorakit train` decides from the data when the user leaves them at ``auto``.

Fast by default: a user who gives no speed flag gets the fastest run that trains the same thing.
- ``packing``: on when packing the training samples into ``--max-seq-len`` rows needs `PACKING_GAIN`
  fewer rows or more: fewer padding positions computed, and more tokens per GEMM where samples are
  short. Samples never attend to each other in a row (`lorakit.train.batches`), so what is learned
  is the same.
  Not for prefix and prompt tuning: their virtual tokens sit in front of each row, and the samples
  packed in one row would share them (off, and an explicit ``--packing`` is refused).
- ``mask_prompt`` (completion-only loss): on when the samples have a prompt (prompt/completion or
  chat data), so the adapter learns the answers, not to echo the instructions; plain text has none.
``precision``, ``grad_checkpoint`` and ``release_memory`` ``auto`` are resolved by the speed plan (`lorakit.plan.speed`);
`precision_choice` and `memory_choices` word them like the other two (`Choice.format`) for the run's log
and ``summary.json``, each with the flag that turns it off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lorakit.data.schema import Sample
from lorakit.plan.speed import SpeedPlan
from lorakit.train.batches import packed_rows
from lorakit.train.config import VIRTUAL_METHODS, TrainConfig

PACKING_PROBE = 4096  # samples the packing decision looks at (first-fit is quadratic in the rows)
PACKING_GAIN = 0.05  # pack when it needs at least this share fewer rows: below that, packing's
# block-diagonal attention mask (slower than plain causal attention) can cost what it saves
# (bench/RESULTS.md, round 7: at a tenth fewer rows, packing trained faster)


@dataclass(frozen=True)
class Choice:
    """What one ``auto`` setting resolved to, why, and the flag that says otherwise."""

    setting: str
    value: object
    why: str
    flag: str = ""  # empty where no flag would change anything

    def format(self) -> str:
        return f"{self.setting}: {self.value} ({self.why}{'; ' + self.flag if self.flag else ''})"

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def choose_packing(samples: list[Sample], row_len: int) -> Choice:
    """Pack when first-fit packing of the first `PACKING_PROBE` samples needs `PACKING_GAIN` fewer rows."""
    probe = samples[:PACKING_PROBE]
    rows = len(packed_rows(probe, row_len))
    on = rows <= (1 - PACKING_GAIN) * len(probe)
    why = f"{len(probe)} samples fit in {rows} rows of {row_len} tokens"
    return Choice("packing", on, why, "--no-packing to turn off" if on else "--packing to force")


def choose_mask_prompt(samples: list[Sample]) -> Choice:
    """Completion-only loss when any sample has a prompt."""
    prompted = sum(1 for s in samples if s.prompt_len > 0)
    if prompted:
        return Choice("mask_prompt", True, f"{prompted} of {len(samples)} samples have a prompt: loss on "
                      "completions only", "--no-mask-prompt for loss on every token")
    return Choice("mask_prompt", False, "no sample has a prompt (plain text): nothing to mask")


def resolve_data_defaults(cfg: TrainConfig, samples: list[Sample]) -> tuple[TrainConfig, list[Choice]]:
    """`cfg` with ``packing`` and ``mask_prompt`` decided from `samples` where they are None (auto), and
    the choices made (empty when the user set both)."""
    choices = []
    if cfg.packing is None and cfg.method in VIRTUAL_METHODS:
        choices.append(Choice("packing", False, f"--method {cfg.method} puts its virtual tokens in front of every "
                              "row: packed samples would share them"))
    elif cfg.packing is None:
        choices.append(choose_packing(samples, cfg.max_seq_len))
    if cfg.mask_prompt is None:
        choices.append(choose_mask_prompt(samples))
    return dataclasses.replace(cfg, **{c.setting: c.value for c in choices}), choices


def precision_choice(asked: str, resolved: str) -> Choice | None:
    """The ``auto`` precision's choice (`lorakit.runtime.precision.resolve_precision`), worded like the
    others; None when the user named a precision."""
    if asked != "auto":
        return None
    if resolved == "bf16":
        return Choice("precision", "bf16", "this chip runs bf16 GEMMs natively; adapter, optimizer and loss "
                      "stay fp32", "--precision fp32 to turn off")
    return Choice("precision", resolved, "this chip has no native bf16 GEMMs",
                  "--precision int8 to try int8 GEMMs for the frozen weights")


def memory_choices(asked: TrainConfig, plan: SpeedPlan) -> list[Choice]:
    """What ``auto`` gradient checkpointing and memory release turned on (`lorakit.plan.speed.for_memory`);
    nothing for an option the user set or that stayed off (the usual case, not worth a line)."""
    choices = []
    if asked.grad_checkpoint is None and plan.grad_checkpoint:
        choices.append(Choice("grad_checkpoint", True, f"{asked.method} is chosen for memory: each layer's "
                              "activations are recomputed in backward", "--no-grad-checkpoint to turn off"))
    if asked.release_memory is None and plan.release_memory:
        choices.append(Choice("release_memory", True, f"{asked.method} is chosen for memory: freed memory goes "
                              "back to the OS at once", "--no-release-memory for more tokens/s"))
    return choices
