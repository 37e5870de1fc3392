"""Load every input into Documents (cleaned books, free-text records) and Pairs (ready prompts).

A Document is the unit of deduplication, chunking and book-level splitting; its
``meta`` becomes the ``meta`` of every sample cut from it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lorakit.data.gutenberg import clean_gutenberg, clean_plain, is_gutenberg
from lorakit.data.readers import BadInputError, Record, expand_inputs, parse_jsonl, read_source
from lorakit.data.structure import Para

# Transliterations vary between translations; one name per author keeps counts and prompts consistent.
AUTHOR_ALIASES = {
    ("dostoevsky", "dostoyevsky", "dostoievsky", "dostoevski", "dostoieffsky"): "Fyodor Dostoevsky",
    ("tolstoy", "tolstoi"): "Leo Tolstoy",
    ("gogol",): "Nikolai Gogol",
    ("turgenev", "turgenieff", "tourgenieff", "turgeniev"): "Ivan Turgenev",
    ("chekhov", "tchekhov", "tchekov", "chekov", "tchehov"): "Anton Chekhov",
    ("pushkin", "poushkin"): "Alexander Pushkin",
    ("lermontov",): "Mikhail Lermontov",
    ("goncharov",): "Ivan Goncharov",
    ("gorky", "gorki"): "Maxim Gorky",
}
_SURNAME_TO_AUTHOR = {alias: name for aliases, name in AUTHOR_ALIASES.items() for alias in aliases}
META_KEYS = ("book", "author", "title", "translator", "gutenberg_id")


def canonical_author(name: str | None) -> str | None:
    """Map spelling variants of well-known authors to one name ('Leo Tolstoi' -> 'Leo Tolstoy')."""
    if not name or not isinstance(name, str):
        return name
    parts = re.findall(r"[^\W\d_]+", name.lower())
    for part in reversed(parts):
        if part in _SURNAME_TO_AUTHOR:
            return _SURNAME_TO_AUTHOR[part]
    return name


@dataclass
class Document:
    """A cleaned text: paragraphs plus the metadata every sample cut from it carries."""

    doc_id: str
    source: str
    meta: dict
    paras: list[Para]
    kind: str  # gutenberg | text | jsonl
    has_header: bool = False  # a Gutenberg metadata header was found (the copy to keep among duplicates)

    @property
    def text(self) -> str:
        """All paragraphs, blank-line separated."""
        return "\n\n".join(p.text for p in self.paras)


@dataclass
class Pair:
    """A ready prompt/completion (or chat) record from JSONL."""

    prompt: str
    completion: str
    meta: dict
    source: str
    line: int
    messages: list[dict] | None = None


@dataclass
class Loaded:
    """Everything read from the inputs, with a per-file report."""

    docs: list[Document] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    removed: Counter = field(default_factory=Counter)


def _book_id(path: Path, used: set[str]) -> str:
    name = path.name
    for suffix in (".gz", ".txt", ".text", ".jsonl"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    book = name
    if book in used:  # same file name in two folders
        book = f"{path.parent.name}/{name}"
    used.add(book)
    return book


def _text_or_none(value: object) -> str | None:
    """A metadata value as text: JSONL may hold any type where a name belongs (a number is its digits)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None  # null, a bool, a float, a list or an object names nothing


def _gutenberg_id(value: object) -> int | None:
    """A Project Gutenberg ebook number, or None where the value cannot be one."""
    if isinstance(value, float) and value.is_integer():  # is_integer is False for NaN and infinities
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 20:
        return int(value)
    return None


def _fill_meta(meta: dict, book: str, source: str) -> dict:
    out: dict = {key: _text_or_none(meta.get(key)) for key in META_KEYS}
    out["book"] = out["book"] or book
    out["author"] = canonical_author(out["author"])
    out["gutenberg_id"] = _gutenberg_id(meta.get("gutenberg_id"))
    out["source"] = source
    return out


def _records_to_items(records: list[Record], book: str, loaded: Loaded) -> None:
    for rec in records:
        meta = _fill_meta(rec.meta, _text_or_none(rec.meta.get("book")) or _text_or_none(rec.meta.get("title")) or book,
                          rec.source)
        task = _text_or_none(rec.meta.get("task")) or "custom"
        if rec.kind == "text":
            clean = clean_plain(rec.text)
            loaded.removed.update(clean.removed)
            loaded.docs.append(Document(f"{rec.source}:{rec.line}", rec.source, meta, clean.paras, "jsonl"))
        elif rec.kind == "pair":
            meta["task"] = task
            loaded.pairs.append(Pair(rec.prompt, rec.completion, meta, rec.source, rec.line))
        else:
            meta["task"] = task
            prior = "\n\n".join(m["content"] for m in rec.messages[:-1])
            loaded.pairs.append(Pair(prior, rec.messages[-1]["content"], meta, rec.source, rec.line, rec.messages))


def load_inputs(paths: Iterable[str | Path], *, skip_bad: bool = False, keep_front_matter: bool = False,
                exclude: Path | None = None) -> Loaded:
    """Read, decode and clean every input; bad files raise or (skip_bad) are listed in `bad`.

    Files under `exclude` (the output folder) are not read.
    """
    loaded = Loaded()
    files, ignored = expand_inputs(paths, exclude)
    loaded.ignored = [str(p) for p in ignored]
    used: set[str] = set()
    for path in files:
        try:
            src = read_source(path)
        except BadInputError as err:
            if not skip_bad:
                raise
            loaded.bad.append(err.as_dict())
            continue
        book = _book_id(path, used)
        entry = {"file": str(path), "book": book, "encoding": src.encoding, "bom": src.bom,
                 "newlines": src.newlines, "compressed": src.compressed, "status": "ok"}
        if src.kind == "jsonl":
            n_bad = len(loaded.bad)
            records = parse_jsonl(src, skip_bad=skip_bad, bad=loaded.bad)
            entry.update(kind="jsonl", records=len(records), bad_lines=len(loaded.bad) - n_bad)
            _records_to_items(records, book, loaded)
        else:
            gutenberg = is_gutenberg(src.text)
            clean = clean_gutenberg(src.text, keep_front_matter=keep_front_matter) if gutenberg else clean_plain(src.text)
            loaded.removed.update(clean.removed)
            meta = _fill_meta(clean.meta, book, str(path))
            entry.update(kind="gutenberg" if gutenberg else "text", paragraphs=len(clean.paras),
                         words=sum(len(p.text.split()) for p in clean.paras),
                         author_as_written=clean.meta.get("author"), markers=clean.markers,
                         removed={k: v for k, v in clean.removed.items() if v},
                         **{k: meta[k] for k in ("title", "author", "translator", "gutenberg_id")})
            if not clean.paras:
                entry["status"] = "empty_after_cleaning"
            else:
                has_header = bool(clean.markers.get("start")) and clean.removed.get("header_lines", 0) > 2
                loaded.docs.append(Document(book, str(path), meta, clean.paras, entry["kind"], has_header))
        loaded.files.append(entry)
    return loaded
