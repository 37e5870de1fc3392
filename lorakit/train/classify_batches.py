"""Classification examples -> batches: the model's special tokens, dynamic padding, length bucketing.

A row of a classification dataset (`lorakit data prepare --task classify`) holds a passage's
``input_ids`` without special tokens and its class name; ``report.json`` lists the classes (a
class's id is its index) and, with ``--balance weights``, one weight per class. The model's own
special tokens (BERT's ``[CLS] ... [SEP]``, a decoder's BOS) are added here, as its tokenizer adds
them around a text.

A batch is padded only to its own longest row, with an attention mask. To keep that short, each
epoch's shuffled order is cut into windows of `WINDOW` batches, each window is sorted by length
and cut into batches, and the epoch's batches are shuffled again. The order is a pure function
of (seed, epoch), so a resumed run sees the batches an uninterrupted one sees.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.data.schema import read_rows, where
from lorakit.errors import LorakitError, short_repr
from lorakit.train.batches import LoadStats, epoch_order

TASK = "classify"  # the rows' and report.json's `task` (`lorakit.data.classify`)
WINDOW = 8  # batches sorted by length together: less padding, while batches still mix across the epoch
PREPARE = "`lorakit data prepare --task classify --label FIELD`"


@dataclass
class Example:
    """One classification example: token ids with the model's special tokens, and its class id."""

    ids: list[int]
    label: int


@dataclass(frozen=True)
class ClassifyReport:
    """What a classification dataset's report.json says the trainer needs."""

    classes: list[str]  # class id i is classes[i]
    weights: list[float] | None  # per class, in id order; None: every example counts once


def _report(data: Path, strict: bool = True) -> dict[str, Any] | None:
    """report.json as an object (None when absent); unreadable: refused, or None unless `strict`."""
    path = data / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        if not strict:
            return None
        raise LorakitError(f"{path}: not valid JSON; re-run {PREPARE} --out {data}") from None
    return report if isinstance(report, dict) else None


def read_report(data_dir: str | Path | None) -> ClassifyReport:
    """The classes and class weights of a classification dataset; refuses, in one line, a missing
    dataset, a language-model dataset, and classes or weights that are not what prepare writes."""
    if not data_dir:
        raise LorakitError(f"--data is required: a directory from {PREPARE}")
    data = Path(data_dir)
    if not data.is_dir():
        raise LorakitError(f"{data}: dataset directory not found; run {PREPARE} --out {data}")
    report = _report(data)
    if report is None or report.get("task") != TASK:
        what = "has no report.json" if report is None else "is a language-model dataset (report.json has no task classify)"
        raise LorakitError(f"{data} {what}: --task classify trains on a classification dataset; prepare one with "
                           f"{PREPARE}, or train this one with --task lm")
    classes, weights = report.get("classes"), report.get("class_weights")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) \
            or len(set(classes)) != len(classes):
        raise LorakitError(f"{data / 'report.json'}: 'classes' must list two or more distinct class names, got "
                           f"{short_repr(classes)}; re-run {PREPARE} --out {data}")
    if weights is not None and not (isinstance(weights, list) and len(weights) == len(classes) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in weights)):
        raise LorakitError(f"{data / 'report.json'}: 'class_weights' must be null or {len(classes)} positive numbers "
                           f"(one per class), got {short_repr(weights)}; re-run {PREPARE} --out {data}")
    return ClassifyReport(list(classes), None if weights is None else [float(w) for w in weights])


def _first_row(path: Path) -> dict:
    """The first non-blank line of a JSONL file as an object ({} when there is none or it is not one:
    the split's own reader refuses such a line, with its number)."""
    try:
        with path.open("rb") as fh:
            line = next((raw for raw in fh if raw.strip()), b"")
        row = json.loads(line.decode("utf-8-sig")) if line else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return row if isinstance(row, dict) else {}


def refuse_classify_data(data: Path) -> None:
    """For a language-model run: refuse a classification dataset (its report.json, or its first row)."""
    if (_report(data, strict=False) or {}).get("task") == TASK or _first_row(data / "train.jsonl").get("task") == TASK:
        raise LorakitError(f"{data} is a classification dataset (rows with task classify): train it with "
                           "--task classify, or prepare a text dataset with `lorakit data prepare` (no --task)")


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own (``[CLS]``, ``[SEP]``; a BOS)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if not plain or at is None:  # a tokenizer that rewrites the text itself: nothing can be added safely
        return [], []
    return list(full[:at]), list(full[at + len(plain):])


def max_length(tokenizer, max_seq_len: int, reserved: int = 0) -> int:
    """`max_seq_len`, or the tokenizer's own limit (an encoder's position table) less the `reserved`
    positions in front of the text (prefix or prompt tuning's virtual tokens) where that is lower."""
    limit = getattr(tokenizer, "model_max_length", None)
    return min(max_seq_len, limit - reserved) if isinstance(limit, int) and 0 < limit < 1_000_000 else max_seq_len


def load_examples(path: Path, report: ClassifyReport, tokenizer, max_seq_len: int,
                  strict: bool = False) -> tuple[list[Example], LoadStats]:
    """The examples of one split, each framed by the model's special tokens and at most
    `max_seq_len` ids long (longer ones lose trailing passage tokens, counted, or are refused with
    `strict`). A row that is not a classification row, or whose label is not a class, is refused."""
    read = read_rows(path, "tokens")
    ids_of = {name: i for i, name in enumerate(report.classes)}
    prefix, suffix = special_affixes(tokenizer)
    room = max_seq_len - len(prefix) - len(suffix)
    if room < 1:
        raise LorakitError(f"--max-seq-len {max_seq_len} leaves no room for a passage beside the model's "
                           f"{len(prefix) + len(suffix)} special tokens; raise it")
    examples, stats = [], LoadStats()
    for row, lineno in zip(read.rows, read.lines):
        if row.get("task") != TASK or "label" not in row:
            raise LorakitError(f"{where(path, lineno)}: not a classification row (no task classify and label): "
                               f"--task classify trains on a dataset from {PREPARE}")
        if row["label"] not in ids_of:
            raise LorakitError(f"{where(path, lineno)}: label {short_repr(row['label'])} is not one of report.json's "
                               f"classes ({', '.join(report.classes[:5])}{', ...' if len(ids_of) > 5 else ''}); "
                               f"re-run {PREPARE} --out {path.parent}")
        ids = list(row["input_ids"])
        if len(ids) > room:
            if strict:
                raise LorakitError(f"{where(path, lineno)}: {len(ids) + len(prefix) + len(suffix)} tokens with the "
                                   f"special ones > --max-seq-len {max_seq_len} (--strict); raise it or re-prepare")
            ids, stats.truncated = ids[:room], stats.truncated + 1
        examples.append(Example(prefix + ids + suffix, ids_of[row["label"]]))
        stats.tokens += len(examples[-1].ids)
    stats.samples = len(examples)
    return examples, stats


def padded_examples(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded to the longest: ``input_ids``, ``attention_mask`` (B, T) and ``labels`` (B,)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        mask[i, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e.label for e in examples])}


def bucketed_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of example indices: shuffled, sorted by length within windows of
    `WINDOW` batches, batches shuffled. Only whole batches (the shuffled tail is left out)."""
    order = epoch_order(len(lengths), seed, epoch)
    order = order[:len(order) // batch_size * batch_size]
    span = WINDOW * batch_size
    batches = []
    for start in range(0, len(order), span):
        window = sorted(order[start:start + span], key=lambda i: lengths[i])  # stable: ties keep the shuffle
        batches += [window[i:i + batch_size] for i in range(0, len(window), batch_size)]
    random.Random(seed * 1_000_003 + epoch + 1).shuffle(batches)
    return batches


def fixed_batches(examples: list[Example], batch_size: int, pad_id: int,
                  limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Evaluation batches: the first `limit` (None: all) examples of a fixed shuffle, sorted by length."""
    order = epoch_order(len(examples), 0, 0)[:limit]
    order.sort(key=lambda i: len(examples[i].ids))
    return [padded_examples([examples[i] for i in order[s:s + batch_size]], pad_id)
            for s in range(0, len(order), batch_size)]


class ClassifyBatches:
    """Endless deterministic bucketed batches over `examples`, resumable from ``(epoch, index)``
    (the interface of `lorakit.train.batches.Batches`)."""

    def __init__(self, examples: list[Example], batch_size: int, *, seed: int, pad_id: int, rank: int = 0,
                 world: int = 1) -> None:
        if len(examples) < batch_size * world:
            raise LorakitError(f"{len(examples)} training examples cannot fill one step of --batch-size {batch_size}"
                               f"{f' on {world} processes' if world > 1 else ''}; lower --batch-size")
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.rank, self.world = rank, world
        self.lengths = [len(e.ids) for e in examples]
        self.epoch, self.index = 0, 0
        self._epoch_batches: list[list[int]] | None = None

    def _batches(self) -> list[list[int]]:
        if self._epoch_batches is None:
            self._epoch_batches = bucketed_batches(self.lengths, self.batch_size, self.seed, self.epoch)
        return self._epoch_batches

    def per_epoch(self) -> int:
        """Steps in one epoch (every rank takes one batch per step)."""
        return max(1, len(self._batches()) // self.world)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self._epoch_batches = int(state["epoch"]), int(state["index"]), None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= self.per_epoch():
            self.epoch, self.index, self._epoch_batches = self.epoch + 1, 0, None
        chosen = self._batches()[self.index * self.world + self.rank]
        self.index += 1
        return padded_examples([self.examples[i] for i in chosen], self.pad_id)
