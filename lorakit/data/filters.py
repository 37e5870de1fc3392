"""Paragraph filters: keep English prose, drop other languages, tables and number lists.

Language detection is deliberately simple and dependency-free: English prose uses
common function words ("the", "and", "of"...) in roughly 40% of its words, while a
French or German paragraph almost never does, and non-Latin scripts are caught by
their share of non-ASCII letters.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from lorakit.data.documents import Document
from lorakit.data.textutil import FOREIGN_STOPWORDS, stopword_rate, words

MIN_STOPWORD_RATE = 0.12
MAX_FOREIGN_LETTERS = 0.3
# dotted leaders before page numbers in a contents list, or ",,......" ditto columns
LEADER_DOTS_RE = re.compile(r"\.{6,}\s*\d|,,\.{2,}")
FOREIGN_LETTER_RE = re.compile(r"[^\W\d_a-zA-Z]")
_ASCII_LETTERS = string.ascii_letters.encode()


def _count(data: bytes, chars: bytes) -> int:
    # bytes.translate deletes at C speed; regex findall of single characters is far slower
    return len(data) - len(data.translate(None, chars))


def non_english(text: str) -> bool:
    """True when `text` is mostly not English (other script, or no English function words)."""
    if not text.isascii():
        foreign = len(FOREIGN_LETTER_RE.findall(text))
        letters = _count(text.encode(), _ASCII_LETTERS) + foreign
        if letters >= 3 and foreign / letters > MAX_FOREIGN_LETTERS:
            return True
    ws = words(text[:3000])  # the opening is evidence enough for a long paragraph
    english, foreign = stopword_rate(ws), stopword_rate(ws, FOREIGN_STOPWORDS)
    if len(ws) >= 4 and foreign >= 0.2 and foreign > english:
        return True
    # Short lines without foreign function words ("Merci." / "Yes, sir.") carry too little evidence.
    return (len(ws) >= 6 and english < MIN_STOPWORD_RATE and foreign > 0) or (len(ws) >= 12 and english < 0.08)


def non_prose(text: str, kind: str = "prose") -> bool:
    """True for tables, lists, number columns and dotted leaders (contents with page numbers)."""
    if kind in ("table", "list"):
        return True
    data = text.encode()
    chars = len(text) - text.count(" ") - text.count("\n")
    if not chars:
        return True
    letters = _count(data, _ASCII_LETTERS) + len(FOREIGN_LETTER_RE.findall(text))
    digits = _count(data, string.digits.encode())
    if chars >= 40 and letters / chars < 0.55:
        return True
    if digits >= 6 and digits / max(1, letters + digits) > 0.25:
        return True
    return bool(LEADER_DOTS_RE.search(text))


def paragraph_reason(text: str, kind: str = "prose") -> str | None:
    """Why a paragraph should be dropped ('non_prose' / 'non_english'), or None to keep it."""
    if non_prose(text, kind):
        return "non_prose"
    if non_english(text):
        return "non_english"
    return None


def filter_documents(docs: list[Document], counts: Counter, examples: dict[str, list[str]] | None = None) -> None:
    """Drop non-English and non-prose paragraphs in place, counting each reason."""
    for doc in docs:
        kept = []
        for para in doc.paras:
            reason = paragraph_reason(para.text, para.kind)
            if reason is None:
                kept.append(para)
                continue
            counts[reason] += 1
            if examples is not None and len(examples.setdefault(reason, [])) < 5:
                examples[reason].append(f"{doc.meta['book']}: {para.text[:100]}")
        doc.paras = kept
