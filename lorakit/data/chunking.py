"""Cut documents into passages that fit a token budget, on paragraph or sentence boundaries.

Passages never cross a chapter or scene break (a heading in the source), except that
very short sections are merged with the next so they do not become scraps. Within a
section, passages are balanced: a 1.5-window section becomes two 0.75-window passages
rather than one full window and a stub.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from lorakit.data.documents import Document
from lorakit.data.textutil import split_sentences

_BATCH = 4096


def encode_batch(tokenizer: Any, texts: Sequence[str], *, special: bool = False) -> list[list[int]]:
    """Token ids of each text (batched through a HF tokenizer, or `encode` one by one)."""
    out: list[list[int]] = []
    for start in range(0, len(texts), _BATCH):
        part = list(texts[start : start + _BATCH])
        try:
            out.extend(tokenizer(part, add_special_tokens=special)["input_ids"])
        except TypeError:
            out.extend(tokenizer.encode(t, add_special_tokens=special) for t in part)
    return out


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text (no special tokens)."""
    return [len(ids) for ids in encode_batch(tokenizer, texts)]


def separator_cost(tokenizer: Any, sep: str = "\n\n") -> int:
    """Tokens a paragraph separator adds between two paragraphs (measured, not assumed)."""
    a, b, ab = encode_batch(tokenizer, ["The end.", "Then", f"The end.{sep}Then"])
    return max(0, len(ab) - len(a) - len(b))


@dataclass
class Passage:
    """A window of consecutive paragraphs from one document."""

    doc: Document
    index: int
    paras: list[str]
    tokens: int  # estimated: paragraph tokens + separators

    @property
    def text(self) -> str:
        """The passage as training text."""
        return "\n\n".join(self.paras)


def _split_long(tokenizer: Any, text: str, budget: int) -> list[tuple[str, int]]:
    """Split an over-long paragraph into sentence groups that fit; hard-cut a monster sentence."""
    sentences = split_sentences(text)
    counts = count_tokens(tokenizer, sentences)
    units: list[tuple[str, int]] = []
    for sent, n in zip(sentences, counts):
        if n <= budget:
            units.append((sent, n))
            continue
        ids = encode_batch(tokenizer, [sent])[0]
        for start in range(0, len(ids), budget):
            piece = tokenizer.decode(ids[start : start + budget]).strip()
            units.append((piece, len(ids[start : start + budget])))
    out: list[tuple[str, int]] = []
    for sent, n in units:  # sentences join with a space, which costs no extra token
        if out and out[-1][1] + n <= budget:
            out[-1] = (out[-1][0] + " " + sent, out[-1][1] + n)
        else:
            out.append((sent, n))
    return out


def pack(units: Sequence[tuple[str, int]], budget: int, sep: int) -> list[tuple[list[str], int]]:
    """Group (text, tokens) units into balanced windows of at most `budget` tokens."""
    total = sum(n for _, n in units) + sep * max(0, len(units) - 1)
    target = total / max(1, math.ceil(total / budget))
    windows: list[tuple[list[str], int]] = []
    cur: list[str] = []
    cur_tokens = 0
    for text, n in units:
        add = n + (sep if cur else 0)
        # close the window when this unit would not fit, or would overshoot the target
        # by more than stopping here falls short of it
        if cur and (cur_tokens + add > budget or cur_tokens + add - target > target - cur_tokens):
            windows.append((cur, cur_tokens))
            cur, cur_tokens, add = [], 0, n
        cur.append(text)
        cur_tokens += add
    if cur:
        windows.append((cur, cur_tokens))
    return windows


def _sections(doc: Document, counts: list[int], budget: int) -> list[list[tuple[str, int]]]:
    groups: list[list[tuple[str, int]]] = []
    last_section = None
    for para, n in zip(doc.paras, counts):
        if para.section != last_section:
            if not groups or sum(x for _, x in groups[-1]) >= budget // 4:
                groups.append([])  # a new section starts a new group unless the last is a scrap
            last_section = para.section
        groups[-1].append((para.text, n))
    if len(groups) > 1 and sum(x for _, x in groups[-1]) < budget // 4:
        groups[-2].extend(groups.pop())
    return groups


def chunk_documents(docs: Sequence[Document], tokenizer: Any, budget: int | dict[str, int]) -> list[Passage]:
    """Passages of every document; `budget` is tokens per passage, or a dict by doc_id."""
    texts = [p.text for d in docs for p in d.paras]
    counts = count_tokens(tokenizer, texts)
    sep = separator_cost(tokenizer)
    passages: list[Passage] = []
    pos = 0
    for doc in docs:
        doc_budget = budget[doc.doc_id] if isinstance(budget, dict) else budget
        doc_counts = counts[pos : pos + len(doc.paras)]
        pos += len(doc.paras)
        index = 0
        for group in _sections(doc, doc_counts, doc_budget):
            units: list[tuple[str, int]] = []
            for text, n in group:
                units.extend(_split_long(tokenizer, text, doc_budget) if n > doc_budget else [(text, n)])
            for paras, n in pack(units, doc_budget, sep):
                passages.append(Passage(doc, index, paras, n))
                index += 1
    return passages
