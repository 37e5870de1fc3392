"""Training samples -> batches: padded, or packed rows without cross-sample attention.

A sample is ``(input_ids, prompt_len)`` as written by `lorakit data prepare`. Batches are
dicts of tensors (B, T): ``input_ids``, ``labels`` (next-token targets, -100 where no loss)
and, when packed, ``position_ids`` that restart at 0 for each sample — transformers turns
restarting positions into a block-diagonal causal mask, so packed samples never attend to
each other. The order is a pure function of (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.data.schema import Sample, read_rows, sample_of, where
from lorakit.errors import LorakitError
from lorakit.train.loss import IGNORE


@dataclass
class LoadStats:
    samples: int = 0
    truncated: int = 0
    tokens: int = 0


def load_samples(path: str | Path, tokenizer=None, max_seq_len: int = 512, strict: bool = False) -> tuple[list[Sample], LoadStats]:
    """Read a JSONL split (``input_ids`` + ``prompt_len``, or ``text`` tokenized with `tokenizer`).

    A bad line is refused (`lorakit.data.schema.read_rows`). Samples longer than `max_seq_len`
    are truncated and counted, or refused with `strict`; samples with nothing to predict are skipped.
    """
    read = read_rows(path, "tokens" if tokenizer is None else "text_or_tokens")
    samples: list[Sample] = []
    stats = LoadStats()
    for row, lineno in zip(read.rows, read.lines):
        sample = sample_of(row, tokenizer)
        if len(sample.ids) > max_seq_len:
            if strict:
                raise LorakitError(f"{where(read.path, lineno)}: {len(sample.ids)} tokens > --max-seq-len {max_seq_len} "
                                   "(--strict); raise --max-seq-len or re-chunk the data")
            sample.ids, stats.truncated = sample.ids[:max_seq_len], stats.truncated + 1
        if len(sample.ids) < 2 or sample.prompt_len >= len(sample.ids):
            continue  # nothing to predict
        samples.append(sample)
        stats.tokens += len(sample.ids)
    stats.samples = len(samples)
    return samples, stats


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
