"""Stylometric profile of a text and a distance between two profiles (numpy only).

A profile measures how a text is written, not what it says: the sentence-length
distribution, function-word rates, punctuation rates and a few scalars (mean sentence and
word length, moving-average type-token ratio, dialogue rate). `distance` compares two
profiles group by group with scores in [0, 1] (0: the same profile) and averages them, so
"the adapter's generations moved towards the corpus" is one number with an explanation.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

# The most frequent English function words: their rates are the classic authorship signal
# (Mosteller & Wallace; Burrows' Delta) because they are chosen unconsciously, not by topic.
FUNCTION_WORDS: tuple[str, ...] = tuple(
    """the and of to a in that he was it his i with as had for her you she not at on but is him my be by all so
    this have which from they me were no one said what there would or an when if been we are them do out into who
    up could then now very only did more upon even though yet""".split()
)
PUNCTUATION: tuple[str, ...] = (",", ";", ":", "!", "?", "—", "-", "(", "…", ".")
QUOTES = "\"“”«»"
SENTENCE_BINS = (0, 5, 10, 15, 20, 30, 40, 60, 10**9)  # words per sentence
MATTR_WINDOW = 50  # short enough for a 100-word generation, long enough to be stable

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"”’»)]*\s+|\n\s*\n")


@dataclass
class StyleProfile:
    """How a text is written: distributions (lists) and scalars, all length-independent."""

    words: int
    sentences: int
    sentence_length_hist: list[float]
    function_words: list[float]
    punctuation: list[float]
    mean_sentence_length: float
    mean_word_length: float
    mattr: float
    dialogue_rate: float

    def to_dict(self) -> dict:
        return asdict(self)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (ends at . ! ? … or a blank line); empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def words_of(text: str) -> list[str]:
    """Lower-cased words (letters, with inner apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]


def mattr(words: list[str], window: int = MATTR_WINDOW) -> float:
    """Moving-average type-token ratio: the plain TTR falls with length, this does not."""
    if not words:
        return 0.0
    if len(words) <= window:
        return len(set(words)) / len(words)
    counts: dict[str, int] = {}
    for w in words[:window]:
        counts[w] = counts.get(w, 0) + 1
    total = len(counts)
    for i in range(window, len(words)):
        old, new = words[i - window], words[i]
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        counts[new] = counts.get(new, 0) + 1
        total += len(counts)
    return total / (len(words) - window + 1) / window


def profile(texts: str | list[str]) -> StyleProfile:
    """The profile of one text or of several texts taken together."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    sentences: list[str] = []
    all_words: list[str] = []
    chars = {p: 0 for p in PUNCTUATION}
    ttr_sum = 0.0
    for text in texts:
        sentences += split_sentences(text)
        text_words = words_of(text)
        all_words += text_words
        # per text: a window spanning two unrelated texts would measure the join, not the style
        ttr_sum += mattr(text_words) * len(text_words)
        for p in PUNCTUATION:
            chars[p] += text.count(p)
    n_words = max(len(all_words), 1)
    lengths = [len(words_of(s)) for s in sentences]
    lengths = [n for n in lengths if n > 0]
    hist, _ = np.histogram(lengths, bins=SENTENCE_BINS)
    hist = hist / max(hist.sum(), 1)
    counts: dict[str, int] = {}
    for w in all_words:
        counts[w] = counts.get(w, 0) + 1
    dialogue = sum(1 for s in sentences if any(q in s for q in QUOTES))
    return StyleProfile(
        words=len(all_words),
        sentences=len(lengths),
        sentence_length_hist=[float(x) for x in hist],
        function_words=[counts.get(w, 0) / n_words for w in FUNCTION_WORDS],
        punctuation=[chars[p] / n_words for p in PUNCTUATION],
        mean_sentence_length=float(np.mean(lengths)) if lengths else 0.0,
        mean_word_length=float(np.mean([len(w) for w in all_words])) if all_words else 0.0,
        mattr=ttr_sum / n_words,
        dialogue_rate=dialogue / max(len(sentences), 1),
    )


def bray_curtis(a: list[float], b: list[float]) -> float:
    """sum|a-b| / sum(a+b) for non-negative vectors: 0 when equal, 1 when nothing is shared."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    total = float((x + y).sum())
    return float(np.abs(x - y).sum() / total) if total > 0 else 0.0


def relative_difference(a: float, b: float) -> float:
    """|a-b| / (|a|+|b|), in [0, 1]."""
    total = abs(a) + abs(b)
    return abs(a - b) / total if total > 0 else 0.0


SCALARS = ("mean_sentence_length", "mean_word_length", "mattr", "dialogue_rate")


def distance(a: StyleProfile, b: StyleProfile) -> dict[str, float]:
    """Per-group distances in [0, 1] and their mean under ``"distance"`` (0: same style)."""
    parts = {
        "sentence_length": bray_curtis(a.sentence_length_hist, b.sentence_length_hist),
        "function_words": bray_curtis(a.function_words, b.function_words),
        "punctuation": bray_curtis(a.punctuation, b.punctuation),
        "scalars": float(np.mean([relative_difference(getattr(a, s), getattr(b, s)) for s in SCALARS])),
    }
    return {"distance": float(np.mean(list(parts.values()))), **parts}
