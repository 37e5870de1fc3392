"""Training samples -> batches: padded, or packed rows without cross-sample attention.

A sample is ``(input_ids, prompt_len)`` as written by `lorakit data prepare`. Batches are
dicts of tensors (B, T): ``input_ids``, ``labels`` (next-token targets, -100 where no loss)
and, when packed, ``position_ids`` that restart at 0 for each sample — transformers turns
restarting positions into a block-diagonal causal mask, so packed samples never attend to
each other. The order is a pure function of (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.errors import LorakitError
from lorakit.train.loss import IGNORE


@dataclass
class Sample:
    """Token ids of one training example and how many leading ids are prompt."""

    ids: list[int]
    prompt_len: int = 0


@dataclass
class LoadStats:
    samples: int = 0
    truncated: int = 0
    tokens: int = 0


def load_samples(path: str | Path, tokenizer=None, max_seq_len: int = 512, strict: bool = False) -> tuple[list[Sample], LoadStats]:
    """Read a JSONL split (``input_ids`` + ``prompt_len``, or ``text`` tokenized with `tokenizer`).

    Samples longer than `max_seq_len` are truncated and counted, or refused with `strict`.
    """
    path = Path(path)
    if not path.is_file():
        raise LorakitError(f"{path}: not found; run `lorakit data prepare --out {path.parent}` first")
    samples: list[Sample] = []
    stats = LoadStats()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LorakitError(f"{path}:{lineno}: not JSON ({exc.msg}); fix or re-run `lorakit data prepare`") from None
            ids, prompt_len = _ids_of(row, tokenizer, f"{path}:{lineno}")
            if len(ids) > max_seq_len:
                if strict:
                    raise LorakitError(f"{path}:{lineno}: {len(ids)} tokens > --max-seq-len {max_seq_len} (--strict); "
                                       "raise --max-seq-len or re-chunk the data")
                ids, stats.truncated = ids[:max_seq_len], stats.truncated + 1
            if len(ids) < 2 or prompt_len >= len(ids):
                continue  # nothing to predict
            samples.append(Sample(ids, prompt_len))
            stats.tokens += len(ids)
    stats.samples = len(samples)
    return samples, stats


def _ids_of(row: dict, tokenizer, where: str) -> tuple[list[int], int]:
    if "input_ids" in row:
        return [int(t) for t in row["input_ids"]], int(row.get("prompt_len", 0))
    if "text" in row and tokenizer is not None:
        return tokenizer(row["text"])["input_ids"], 0
    raise LorakitError(f"{where}: a sample needs 'input_ids' (or 'text' with a tokenizer); re-run `lorakit data prepare`")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Shuffled sample indices of one epoch; depends only on (seed, epoch)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _labels(sample: Sample, mask_prompt: bool) -> list[int]:
    ids = sample.ids
    labels = ids[1:] + [IGNORE]
    if mask_prompt and sample.prompt_len:
        # position t predicts token t+1: prompt tokens are never targets
        for t in range(min(sample.prompt_len - 1, len(labels))):
            labels[t] = IGNORE
    return labels


def padded_batch(samples: list[Sample], pad_id: int, mask_prompt: bool) -> dict[str, torch.Tensor]:
    """Right-padded batch. Causal attention means real tokens never see the padding after them,
    so no attention mask is needed; padded positions carry no label."""
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        labels[i, : len(s.ids)] = torch.tensor(_labels(s, mask_prompt))
    return {"input_ids": ids, "labels": labels}


def packed_rows(samples: list[Sample], row_len: int) -> list[list[Sample]]:
    """Greedy first-fit packing in order: each row holds whole samples totalling <= row_len tokens."""
    rows: list[list[Sample]] = []
    free: list[int] = []
    for s in samples:
        for i, room in enumerate(free):
            if len(s.ids) <= room:
                rows[i].append(s)
                free[i] -= len(s.ids)
                break
        else:
            rows.append([s])
            free.append(row_len - len(s.ids))
    return rows


def packed_batch(rows: list[list[Sample]], pad_id: int, mask_prompt: bool) -> dict[str, torch.Tensor]:
    """Rows of concatenated samples; position ids restart per sample (block-diagonal attention)."""
    width = max(sum(len(s.ids) for s in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s.ids)
            ids[i, at:at + n] = torch.tensor(s.ids)
            labels[i, at:at + n] = torch.tensor(_labels(s, mask_prompt))
            positions[i, at:at + n] = torch.arange(n)
            at += n
        positions[i, at:] = torch.arange(width - at)  # padding: its own block, no labels
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


class Batches:
    """Endless deterministic batches over `samples`, resumable from ``(epoch, index)``."""

    def __init__(self, samples: list[Sample], batch_size: int, *, seed: int, pad_id: int, packing: bool = False,
                 row_len: int = 512, mask_prompt: bool = False, rank: int = 0, world: int = 1) -> None:
        if not samples:
            raise LorakitError("no training samples: the dataset is empty after loading")
        self.samples, self.batch_size, self.seed, self.pad_id = samples, batch_size, seed, pad_id
        self.packing, self.row_len, self.mask_prompt = packing, row_len, mask_prompt
        self.rank, self.world = rank, world
        self.epoch, self.index = 0, 0
        self._epoch_units: list[list[Sample]] | None = None

    def _units(self) -> list[list[Sample]]:
        if self._epoch_units is None:
            ordered = [self.samples[i] for i in epoch_order(len(self.samples), self.seed, self.epoch)]
            self._epoch_units = packed_rows(ordered, self.row_len) if self.packing else [[s] for s in ordered]
        return self._epoch_units

    def per_epoch(self) -> int:
        """Batches in one epoch (for every rank together: one global step's worth each)."""
        return max(1, len(self._units()) // (self.batch_size * self.world))

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self._epoch_units = int(state["epoch"]), int(state["index"]), None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= self.per_epoch():
            self.epoch, self.index, self._epoch_units = self.epoch + 1, 0, None
        units = self._units()
        start = (self.index * self.world + self.rank) * self.batch_size
        chunk = units[start:start + self.batch_size]
        self.index += 1
        if self.packing:
            return packed_batch(chunk, self.pad_id, self.mask_prompt)
        return padded_batch([u[0] for u in chunk], self.pad_id, self.mask_prompt)
