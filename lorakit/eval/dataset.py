"""Read a prepared dataset for evaluation: test samples per book, prompts, corpus text.

Works on the schema written by `lorakit data prepare` (see `lorakit.data`): rows carry
``input_ids`` and ``prompt_len`` (the exact token boundary), ``completion`` and ``meta``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.data.schema import Sample, read_rows, sample_of, split_path
from lorakit.errors import LorakitError


@dataclass
class Row:
    """One dataset line, reduced to what evaluation needs."""

    ids: list[int]
    prompt_len: int
    completion: str
    book: str
    task: str
    meta: dict = field(default_factory=dict)

    @property
    def sample(self) -> Sample:
        return Sample(self.ids, self.prompt_len)

    @property
    def scored_tokens(self) -> int:
        """Tokens whose NLL counts: the completion (every token after the first for plain text)."""
        return len(self.ids) - max(self.prompt_len, 1)


def read_split(data_dir: str | Path, split: str, *, allow_empty: bool = True) -> list[Row]:
    """Rows of ``DATA/{split}.jsonl``; refuses a missing or malformed file (and without
    `allow_empty` one with no rows) with a one-line fix (`lorakit.data.schema.read_rows`)."""
    rows: list[Row] = []
    for obj in read_rows(split_path(data_dir, split), "tokens", allow_empty=allow_empty).rows:
        sample = sample_of(obj)
        meta = obj.get("meta") or {}
        book = meta.get("title") or meta.get("book") or "unknown"
        rows.append(Row(sample.ids, sample.prompt_len, obj.get("completion", ""), str(book),
                        str(meta.get("task", "text")), meta))
    return rows


def test_rows(data_dir: str | Path, context: int) -> list[Row]:
    """Scorable test rows, cut to the model's context; refuses an empty test split."""
    rows = [r for r in read_split(data_dir, "test") if len(r.ids) >= 2 and r.prompt_len < len(r.ids)]
    if not rows:
        raise LorakitError(f"{Path(data_dir) / 'test.jsonl'}: no test samples; re-run `lorakit data prepare` "
                           "with --test-fraction > 0 (and enough text for a test book)")
    for r in rows:
        if len(r.ids) > context:
            r.ids = r.ids[:context]
            r.prompt_len = min(r.prompt_len, context - 2)
    return rows


def by_book(rows: list[Row], max_tokens_per_book: int | None, seed: int = 0) -> dict[str, list[Row]]:
    """Rows grouped by book; each book keeps a seeded random subset of about `max_tokens_per_book`
    scored tokens (at least one row), spread over the whole book rather than its first pages."""
    books: dict[str, list[Row]] = {}
    for r in rows:
        books.setdefault(r.book, []).append(r)
    if max_tokens_per_book is None:
        return books
    kept: dict[str, list[Row]] = {}
    for book, items in books.items():
        order = list(range(len(items)))
        random.Random(f"{seed}:{book}").shuffle(order)
        chosen, total = [], 0
        for i in order:
            if chosen and total + items[i].scored_tokens > max_tokens_per_book:
                break
            chosen.append(i)
            total += items[i].scored_tokens
        kept[book] = [items[i] for i in sorted(chosen)]
    return kept


def prompt_rows(rows: list[Row], n: int, tasks: tuple[str, ...] = ("theme", "character", "scene"), seed: int = 0) -> list[Row]:
    """`n` rows to prompt with: one of each of `tasks` first (the seeds' tasks), then others.

    Deterministic for a seed. Rows with no prompt (plain text) prompt with their first tokens.
    """
    rng = random.Random(seed)
    pool = list(rows)
    rng.shuffle(pool)
    chosen: list[Row] = []
    for task in tasks:
        match = next((r for r in pool if r.task == task and r not in chosen), None)
        if match is not None and len(chosen) < n:
            chosen.append(match)
    for r in pool:
        if len(chosen) >= n:
            break
        if r not in chosen:
            chosen.append(r)
    return chosen


def prompt_ids(row: Row, text_prefix_tokens: int = 32) -> list[int]:
    """The row's prompt tokens; for plain text (no prompt) its first `text_prefix_tokens` tokens."""
    if row.prompt_len > 0:
        return row.ids[: row.prompt_len]
    return row.ids[: min(text_prefix_tokens, len(row.ids) - 1)]


def corpus_texts(data_dir: str | Path, max_chars: int = 300_000, seed: int = 0) -> list[str]:
    """Training completions (the style to match), a seeded sample of about `max_chars` characters."""
    rows = read_split(data_dir, "train", allow_empty=False)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    texts, total = [], 0
    for i in order:
        text = rows[i].completion
        if not text:
            continue
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts
