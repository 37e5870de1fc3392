"""Project Gutenberg files: strip header and licence, read the metadata, clean the body.

Handles every marker variant seen in the wild: ``*** START OF THIS/THE PROJECT GUTENBERG
EBOOK ... ***``, the unspaced ``***START OF...***``, and the old small-print header ending
in ``*END*THE SMALL PRINT!...``. Metadata comes from the header fields (Title, Author,
Translator, ``[EBook #N]``), then the START line, then the book's own title page.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from lorakit.data.structure import Para, parse_structure
from lorakit.data.textutil import smart_title

START_RE = re.compile(r"^\W{0,3}\*{3}\s*START\s+OF\s+(?:THE|THIS)\s+PROJECT\s+GUTENBERG\b.*$", re.I | re.M)
END_RE = re.compile(r"^\W{0,3}\*{3}\s*END\s+OF\s+(?:THE|THIS)\s+PROJECT\s+GUTENBERG\b.*$", re.I | re.M)
SMALL_PRINT_END_RE = re.compile(r"^\W{0,3}\*END\*?\s*THE\s+SMALL\s+PRINT\b.*$", re.I | re.M)
END_LINE_RE = re.compile(r"^\W{0,3}End\s+of\s+(?:the\s+|this\s+)?Project\s+Gutenberg\b.*$", re.I | re.M)
FIELD_RE = re.compile(r"^(Title|Authors?|Translators?|Translated by|Language|Release Date|Posting Date)\s*:\s*(.*)$", re.I)
EBOOK_ID_RE = re.compile(r"\[\s*E-?(?:Book|text)\s*#\s*(\d+)\s*\]", re.I)
START_TITLE_RE = re.compile(r"EBOOK\s+(?:OF\s+)?(.+?)\s*\**\s*$", re.I)
FIRST_LINE_RE = re.compile(r"Project Gutenberg(?:['’]s)?\s+E-?(?:Book|text)\s+of\s+(.+?),?\s+by\s+(.+)$", re.I)
BY_RE = re.compile(r"^by\s+(?:count\s+)?(.+?)\.?$", re.I)
TRANSLATED_RE = re.compile(r"^translated\b.*?\bby\s+(?:mrs?\.?\s+|miss\s+)?(.+?)\.?$", re.I)


@dataclass
class CleanText:
    """A cleaned book: paragraphs with sections, metadata and what was removed."""

    paras: list[Para]
    meta: dict
    removed: Counter
    markers: dict = field(default_factory=dict)
    front: list[Para] = field(default_factory=list)


def is_gutenberg(text: str) -> bool:
    """True when the text carries Project Gutenberg markers or header."""
    head = text[:20000]
    return bool(START_RE.search(head) or SMALL_PRINT_END_RE.search(text[:60000]) or END_RE.search(text)
                or "Project Gutenberg" in head)


def split_markers(text: str) -> tuple[str, str, str, dict]:
    """Split into (header, body, footer) at the START/END markers; `info` says which were found."""
    info = {"start": None, "end": None}
    start = 0
    limit = len(text) // 2
    for rx, name in ((START_RE, "start"), (SMALL_PRINT_END_RE, "small_print")):
        m = rx.search(text, 0, max(limit, 20000))
        if m and m.end() > start:
            start = m.end()
            info["start"] = name if name == "small_print" else m.group(0).strip()
    end_m = END_RE.search(text, start)
    end = end_m.start() if end_m else len(text)
    if end_m:
        info["end"] = end_m.group(0).strip()
    else:
        line = END_LINE_RE.search(text, start)
        if line:
            end, info["end"] = line.start(), "end_line"
    return text[:start], text[start:end], text[end:], info


def _clean_value(value: str) -> str:
    value = re.sub(r"^(?:title:\s*)+", "", value.strip(), flags=re.I)
    return re.sub(r"\s+", " ", value).strip(" ,.")


def parse_header(header: str) -> dict:
    """Title, author, translator, language and ebook id from the header block."""
    meta: dict = {}
    lines = header.split("\n")
    for i, line in enumerate(lines):
        m = FIELD_RE.match(line.strip())
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key == "title":
            # a title may continue on indented lines ("The Possessed\n       or, The Devils")
            for nxt in lines[i + 1:i + 3]:
                if nxt.startswith((" ", "\t")) and nxt.strip() and ":" not in nxt:
                    value += " " + nxt.strip()
                else:
                    break
            meta.setdefault("title", _clean_value(value))
        elif key.startswith("author"):
            meta.setdefault("author", _clean_value(value))
        elif key.startswith("translat"):
            meta.setdefault("translator", _clean_value(value))
        elif key == "language":
            meta.setdefault("language", _clean_value(value))
    m = EBOOK_ID_RE.search(header)
    if m:
        meta["gutenberg_id"] = int(m.group(1))
    if "title" not in meta or "author" not in meta:
        for line in lines[:6]:
            fm = FIRST_LINE_RE.search(line.strip())
            if fm:
                meta.setdefault("title", _clean_value(fm.group(1)))
                meta.setdefault("author", _clean_value(fm.group(2)))
                break
    return {k: v for k, v in meta.items() if v not in ("", None)}


def _from_start_line(start_line: str | None, meta: dict) -> None:
    if not start_line or start_line == "small_print":
        return
    m = START_TITLE_RE.search(start_line.strip("* "))
    if not m:
        return
    value = re.sub(r"^title:\s*", "", m.group(1).strip(" *"), flags=re.I)
    if value.isdigit():
        meta.setdefault("gutenberg_id", int(value))
    elif value:
        meta.setdefault("title", smart_title(value))


def _from_title_page(lines: list[str], meta: dict) -> None:
    """Fill gaps from the book's own title page ("By X", "Translated by Y")."""
    for i, line in enumerate(lines):
        m = TRANSLATED_RE.match(line)
        if m and "translator" not in meta:
            meta["translator"] = smart_title(m.group(1).strip())
        elif re.match(r"^translated\b", line, re.I) and "translator" not in meta:
            for nxt in lines[i + 1:i + 4]:
                bm = BY_RE.match(nxt)
                if bm:
                    meta["translator"] = smart_title(bm.group(1).strip())
                    break
        else:
            bm = BY_RE.match(line)
            if bm and "author" not in meta and i < 6:
                meta["author"] = smart_title(bm.group(1).strip())
    if "title" not in meta:
        for line in lines[:4]:
            letters = [c for c in line if c.isalpha()]
            if len(letters) >= 3 and not any(c.islower() for c in letters) and not BY_RE.match(line):
                meta["title"] = smart_title(line.strip(" ."))
                break


def clean_gutenberg(text: str, *, keep_front_matter: bool = False) -> CleanText:
    """Clean a whole Gutenberg file (LF line endings) into paragraphs and metadata."""
    header, body, footer, markers = split_markers(text)
    meta = parse_header(header if markers["start"] else text[:5000])
    _from_start_line(markers["start"], meta)
    if "gutenberg_id" not in meta:
        m = re.search(r"should be named (\d+)", footer) or EBOOK_ID_RE.search(footer)
        if m:
            meta["gutenberg_id"] = int(m.group(1))
    paras, removed, title_lines, front = parse_structure(body, front_matter=True)
    _from_title_page(title_lines, meta)
    removed["header_lines"] += header.count("\n")
    removed["licence_lines"] += footer.count("\n")
    words_main = sum(len(p.text.split()) for p in paras)
    words_front = sum(len(p.text.split()) for p in front)
    if keep_front_matter or words_front > 0.4 * (words_main + words_front):
        # Keeping is the safe choice when "front matter" would be most of the book.
        paras = sorted(front + paras, key=lambda p: p.section)
        removed["front_matter_paragraphs"] = 0
        front = []
    return CleanText(paras, meta, removed, markers, front)


def clean_plain(text: str) -> CleanText:
    """Clean a text that is not from Gutenberg: same paragraph rules, no title-page logic."""
    paras, removed, _, _ = parse_structure(text, front_matter=False)
    return CleanText(paras, {}, removed, {"start": None, "end": None})
