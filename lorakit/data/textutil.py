"""Small text helpers shared by the data pipeline: normalisation, words, shingles, hashes."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Characters that are never meaningful in prose: C0/C1 controls except newline and tab.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Zero-width and byte-order marks that survive decoding and confuse tokenizers.
INVISIBLE_RE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
SPACES_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
EXOTIC_SPACE_RE = re.compile(r"[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")

# The commonest English function words: prose in English uses them in 35-55% of its words,
# other languages written in Latin letters (French, German) almost never.
STOPWORDS = frozenset(
    """a about after again all also am an and any are as at be been before being but by can
    could did do does doing done down each even ever every for from had has have having he her
    here hers herself him himself his how i if in into is it its itself just like me more most
    much my myself no nor not now of off on once one only or other our ours out over own said
    same she should so some still such than that the their them then there these they this
    those through to too under until up upon us very was we were what when where which while
    who whom why will with would yet you your yours it's i'm don't that's he's she's you're i've
    can't won't didn't isn't wasn't there's let's""".split()
)
# Function words of the other languages that turn up in these books (French and German
# dialogue, Latin tags), left out where they are also English words ("son", "ma", "die").
FOREIGN_STOPWORDS = frozenset(
    """le la les des du et est je tu il elle nous vous ils elles que qui pas une ce cette mes mais
    pour avec dans sur aux ne sont suis très c'est j'ai qu'il der das und ist ich nicht sie ein
    eine zu den mit auf dem sich auch wie aber""".split()
)


def normalize_text(text: str) -> str:
    """NFC-normalise, drop control and zero-width characters, turn tabs and exotic spaces into spaces."""
    text = unicodedata.normalize("NFC", text)
    text = INVISIBLE_RE.sub("", text)
    # one space per exotic space: leading indentation still tells verse and title pages apart
    return CONTROL_RE.sub("", EXOTIC_SPACE_RE.sub(" ", text))


def collapse_spaces(text: str) -> str:
    """Collapse runs of spaces inside lines and strip each line (newlines are kept)."""
    return "\n".join(SPACES_RE.sub(" ", line).strip() for line in text.split("\n")).strip()


def words(text: str) -> list[str]:
    """Lower-cased alphabetic words (apostrophes kept inside words, curly ones made straight)."""
    return WORD_RE.findall(text.lower().replace("’", "'"))


def stopword_rate(ws: list[str], vocabulary: frozenset[str] = STOPWORDS) -> float:
    """Share of `ws` that are function words of `vocabulary` (English by default)."""
    return sum(1 for w in ws if w in vocabulary) / len(ws) if ws else 0.0


def dedup_key(text: str) -> str:
    """Hash of the text with case, punctuation and spacing removed: equal keys = exact duplicates."""
    norm = " ".join(words(text))
    return hashlib.sha1(norm.encode("utf-8")).hexdigest()


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams as bytes (the unit MinHash compares); short texts give one shingle."""
    ws = words(text)
    if len(ws) <= n:
        return [" ".join(ws).encode("utf-8")] if ws else []
    return [" ".join(ws[i : i + n]).encode("utf-8") for i in range(len(ws) - n + 1)]


_SMALL_WORDS = frozenset("a an and as at but by for from in into nor of on or the to with".split())


def smart_title(text: str) -> str:
    """Title-case an ALL-CAPS title or name ('CRIME AND PUNISHMENT' -> 'Crime and Punishment')."""
    if any(c.islower() for c in text):
        return text
    out = []
    for i, w in enumerate(text.lower().split()):
        if i and w in _SMALL_WORDS:
            out.append(w)
        else:
            # capitalise each part of hyphenated or initialled names: "c.j." -> "C.J."
            out.append(re.sub(r"(^|[-.’'])([a-z])", lambda m: m.group(1) + m.group(2).upper(), w))
    return " ".join(out)


SENTENCE_END_RE = re.compile(r"(?<=[.!?…])[\"”’'»)\]]*\s+(?=[\"“‘'«(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split prose at sentence ends (keeps closing quotes with their sentence)."""
    parts: list[str] = []
    start = 0
    for m in SENTENCE_END_RE.finditer(text):
        end = m.start() + len(m.group(0).rstrip())
        parts.append(text[start:end].strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]
