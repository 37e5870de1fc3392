"""Turn a plain-text book body into paragraphs: headings, contents and notes become structure.

The body is cut into blocks (runs of non-blank lines). Each block is classified:
heading (chapter titles become section boundaries, never text), table of contents,
title page / preface / introduction (front matter, for Gutenberg books), footnotes,
separators, boilerplate, verse (line breaks kept) or prose (hard wraps undone).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from lorakit.data.textutil import collapse_spaces, normalize_text

ROMAN = r"(?-i:[IVXLCDM]+)"
NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    "seventeen|eighteen|nineteen|twenty|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last"
)
STRUCT_RE = re.compile(
    rf"^(?:chapter|book|part|volume|vol\.|canto|section|letter|act|scene|stave)\s+"
    rf"(?:{ROMAN}|\d+|(?:the\s+)?(?:{NUMBER_WORDS}))\b", re.I)
NUMERAL_RE = re.compile(rf"^[\[(]?(?:{ROMAN}|\d{{1,3}})[.)\]]?$")
KEYWORD_RE = re.compile(
    r"^(?:the\s+)?(?:(?:translator|author|editor|preparer|publisher|transcriber)['’]?s?\s+)?"
    r"(?:preface|introduction|introductory note|foreword|prologue|epilogue|conclusion|contents|table of contents|"
    r"appendix|afterword|notes?|footnotes|endnotes|the end|finis|postscript|dedication|index|glossary)\b", re.I)
FRONT_RE = re.compile(
    r"^(?:the\s+)?(?:(?:translator|author|editor|preparer|publisher|transcriber)['’]?s?\s+)?"
    r"(?:preface|introduction|introductory note|foreword|note|biographical note|biography)\b", re.I)
CONTENTS_RE = re.compile(r"^(?:table\s+of\s+)?contents\W*$", re.I)
FOOTNOTES_RE = re.compile(r"^(?:foot|end)?notes\W*$", re.I)
NOTE_HEADING_RE = re.compile(r"^transcriber['’]?s?\s+notes?\W*$", re.I)
BOILERPLATE_RE = re.compile(
    r"^(?:produced by|e-?text prepared by|this e-?(?:book|text) (?:was )?(?:produced|prepared)|transcribed (?:from|by)|"
    r"html version by|end of (?:the |this )?project gutenberg|updated editions will)|project gutenberg|gutenberg\.org",
    re.I)
URL_LINE_RE = re.compile(r"^\(?(?:https?://|www\.)\S+\)?$")
SEPARATOR_RE = re.compile(r"^[\s*.·•\-_=~#+]+$")
FOOTNOTE_BLOCK_RE = re.compile(r"^(?:\[(?:\d{1,3}|\*+|[a-z†‡§])\]|\*\s?\(\d{1,2}\)|\*\s?[“\"‘'A-Za-z])")
# Spans removed before the body is cut into blocks (they may sit inside paragraphs).
SPAN_RES = {
    "illustrations": re.compile(r"\[\s*illustration[^\]]{0,2000}\]", re.I),
    "transcriber_notes": re.compile(r"\[\s*(?:transcriber|e-?text editor|editor)['’]?s?\s+notes?\b[^\]]{0,4000}\]", re.I),
    "footnotes": re.compile(r"\[\s*(?:footnote|sidenote)[^\]]{0,4000}\]", re.I),
}
# footnote references: "[12]", "[*]", "word*" and " * " (but not "N***", a censored name)
INLINE_REF_RE = re.compile(r"\s?\[(?:\d{1,3}|\*+)\]|\s?\*\(\d{1,2}\)|(?<=[^\s*])\*(?![*\w])|(?<=\s)\*(?=[\s—]|$)")
# a translator's gloss inside a sentence: "the troikas [sledges drawn by three horses] are"
GLOSS_RE = re.compile(r"\s?\[[^\[\]\n]{1,200}\]")
ITALIC_RE = re.compile(r"(?<![\w_])_(?=\S)([^_]{1,400}?)(?<=\S)_(?![\w_])")
QUOTE_START = "\"'“‘«(["


@dataclass
class Para:
    """A cleaned paragraph; `section` increases at every heading or scene break."""

    text: str
    section: int
    kind: str = "prose"  # prose | verse | table | list

    @property
    def verse(self) -> bool:
        """True for poetry and inscriptions (their line breaks are kept)."""
        return self.kind == "verse"


def _words(line: str) -> list[str]:
    return line.split()


def _lower_long_words(line: str) -> int:
    return sum(1 for w in _words(line) if len(w) >= 4 and w[0].islower())


def _strip_bullet(line: str) -> str:
    return re.sub(r"^[*•·]\s+", "", line.strip())


def is_strong_heading(line: str) -> bool:
    """Chapter/part/book lines, bare numerals and short ALL-CAPS lines."""
    s = _strip_bullet(line)
    if not s or s[0] in QUOTE_START[:-2]:
        return False
    if NUMERAL_RE.match(s):
        return True
    n = len(_words(s))
    if n <= 14 and (STRUCT_RE.match(s) or KEYWORD_RE.match(s)) and _lower_long_words(s) == 0:
        return True
    letters = [c for c in s if c.isalpha()]
    return n <= 14 and len(letters) >= 2 and not any(c.islower() for c in letters) and not s.endswith(",")


def is_titleish(line: str, max_words: int = 8) -> bool:
    """A short Title Case line without sentence punctuation inside (a title, a name)."""
    s = _strip_bullet(line)
    if not s or s[0] in QUOTE_START or not (s[0].isupper() or s[0].isdigit()):
        return False
    ws = _words(s)
    return len(ws) <= max_words and _lower_long_words(s) == 0 and not s.endswith((",", ";", ":", "—", "-"))


def _norm_entry(line: str) -> str:
    s = _strip_bullet(line).lower()
    s = re.sub(r"[\s.]*\d+$", "", s)  # page numbers
    return re.sub(r"[^\w\s]", "", s).strip()


def _is_toc_line(line: str) -> bool:
    s = _strip_bullet(line)
    return is_strong_heading(s) or is_titleish(s, 14) or (len(_words(s)) <= 15 and bool(re.search(r"\d+$", s)))


def _is_verse(lines: list[str]) -> bool:
    """Short lines that mostly start with a capital: poetry or an inscription, not wrapped prose."""
    if len(lines) < 2:
        return False
    stripped = [ln.strip() for ln in lines]
    capital = sum(1 for s in stripped if s.lstrip(QUOTE_START)[:1].isupper()) / len(stripped)
    indented = all(ln.startswith("  ") for ln in lines)
    longest = max(len(s) for s in stripped)
    return capital >= 0.6 and (longest <= 60 if indented else longest <= 48 and len(lines) >= 3)


TABLE_GAP_RE = re.compile(r"\S\s{3,}\S|\|")
LIST_ITEM_RE = re.compile(r"^\s*(?:[-•–]\s|\(?\d{1,3}[.)]\s|\(?[a-z][.)]\s)")


def _block_kind(lines: list[str]) -> str:
    """'table' (aligned columns), 'list' (numbered or bulleted items), 'verse' or 'prose'."""
    if len(lines) >= 2:
        if sum(1 for ln in lines if TABLE_GAP_RE.search(ln.strip())) >= max(2, len(lines) * 0.6):
            return "table"
        if sum(1 for ln in lines if LIST_ITEM_RE.match(ln)) >= max(2, len(lines) * 0.6):
            return "list"
    return "verse" if _is_verse(lines) else "prose"


def _unwrap(lines: list[str]) -> str:
    out = ""
    for ln in (x.strip() for x in lines):
        if not out:
            out = ln
        elif out.endswith("-") and out[-2:-1].isalpha() and ln[:1].islower():
            out += ln  # a word hyphenated across the line break
        else:
            out += " " + ln
    return out


def clean_inline(text: str, removed: Counter | None = None) -> str:
    """Drop footnote markers, bracketed glosses inside sentences and _italic_ underscores; normalise spaces."""
    text = INLINE_REF_RE.sub("", text)
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):  # a whole bracketed paragraph stays
        text, n = GLOSS_RE.subn("", text)
        if removed is not None:
            removed["bracketed_glosses"] += n
    # _italics_ lose their marks; stray underscores left by unbalanced marks go too
    text = ITALIC_RE.sub(r"\1", text).replace("_", "")
    return collapse_spaces(text)


class _State:
    def __init__(self) -> None:
        self.section = 0
        self.main = False  # main text has started (a real paragraph was kept)
        self.in_group = False  # inside a run of headings with no prose between
        self.group_front = False  # the current heading run names a preface/introduction
        self.group_strong = False  # the current heading run has a chapter-like heading
        self.mode = ""  # "" | footnotes | note
        self.note_blocks = 0


def parse_structure(body: str, *, front_matter: bool = True) -> tuple[list[Para], Counter, list[str], list[Para]]:
    """Paragraphs of `body` plus removal counts, title-page lines and front-matter paragraphs.

    With `front_matter` (Gutenberg books), short title-page blocks before the text and
    sections headed PREFACE / INTRODUCTION / ...NOTE before the first chapter are set aside.
    """
    removed: Counter = Counter()
    for name, rx in SPAN_RES.items():
        body, n = rx.subn("", body)
        removed[name] += n
    lines = [normalize_text(ln).rstrip() for ln in body.split("\n")]
    blocks: list[list[str]] = []
    cur: list[str] = []
    for ln in lines:
        if URL_LINE_RE.match(ln.strip()):
            removed["boilerplate"] += 1
            continue
        if ln.strip():
            cur.append(ln)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)

    st = _State()
    paras: list[Para] = []
    front: list[Para] = []
    title_lines: list[str] = []
    toc_entries: set[str] = set()
    prev_heading = False
    i = 0
    while i < len(blocks):
        block = blocks[i]
        i += 1
        first = block[0].strip()
        text1 = " ".join(ln.strip() for ln in block)
        if SEPARATOR_RE.match(text1):
            removed["separators"] += 1
            st.section += 1
            continue
        if BOILERPLATE_RE.search(first) or "Project Gutenberg" in text1:
            removed["boilerplate"] += len(block)
            continue
        if CONTENTS_RE.match(_strip_bullet(first)):
            # Table of contents: consume entry blocks, keep entries to recognise headings later.
            entries = [b for b in [block[1:]] if b]
            while i < len(blocks) and all(_is_toc_line(ln) for ln in blocks[i]):
                entries.append(blocks[i])
                i += 1
            lines_toc = [ln for b in entries for ln in b]
            flat = [_norm_entry(ln) for ln in lines_toc]
            toc_entries.update(e for e in flat if e)
            removed["toc_lines"] += 1 + len(lines_toc)
            # The body's first heading usually repeats the first entry: give those lines back as headings.
            back = next((j for j in range(1, len(flat)) if flat[j] and flat[j] == flat[0]), None)
            if back is not None:
                blocks[i:i] = [[ln] for ln in lines_toc[back:]]
                removed["toc_lines"] -= len(lines_toc) - back
            elif lines_toc:
                # The last entry may be the first heading; marked weak, it is a section break but
                # does not count as a chapter heading (which would end a preface).
                blocks.insert(i, ["\x00weak", lines_toc[-1]])
                removed["toc_lines"] -= 1
            continue
        weak = first == "\x00weak"
        if weak:
            block = block[1:]
            first = block[0].strip()
        heading = len(block) <= 4 and (
            all(is_strong_heading(ln) for ln in block)
            or (is_strong_heading(block[0]) and all(is_titleish(ln, 14) for ln in block[1:]))
            or (len(block) == 1 and is_titleish(first) and (
                not st.main or prev_heading or _norm_entry(first) in toc_entries))
        )
        if heading:
            prev_heading = True
            removed["headings"] += len(block)
            if not st.in_group:
                st.in_group, st.group_strong = True, False
                st.section += 1
            joined = " ".join(ln.strip() for ln in block)
            if not weak and (any(STRUCT_RE.match(_strip_bullet(ln)) or NUMERAL_RE.match(_strip_bullet(ln))
                                 for ln in block) or _norm_entry(first) in toc_entries):
                # a chapter-like heading ends any preface; signatures and lists inside one do not
                st.group_strong, st.group_front = True, False
            if front_matter and not st.main and FRONT_RE.match(_strip_bullet(first)):
                st.group_front = True
            if FOOTNOTES_RE.match(joined):
                st.mode = "footnotes"
            elif NOTE_HEADING_RE.match(joined):
                st.mode, st.note_blocks = "note", 0
            elif st.mode == "note" or (st.mode == "footnotes" and is_strong_heading(first)):
                st.mode = ""
            if not st.main:
                title_lines.extend(ln.strip() for ln in block)
            continue
        prev_heading = False
        if st.mode == "footnotes" or FOOTNOTE_BLOCK_RE.match(first):
            removed["footnotes"] += 1
            continue
        if st.mode == "note":
            st.note_blocks += 1
            removed["transcriber_notes"] += 1
            if st.note_blocks >= 5:
                st.mode = ""
            continue
        st.in_group = False
        kind = _block_kind(block)
        verse = kind != "prose"  # verse, tables and lists keep their line breaks
        text = ("\n".join(clean_inline(ln, removed) for ln in block) if verse
                else clean_inline(_unwrap(block), removed))
        if not text:
            continue
        para = Para(text, st.section, kind)
        if front_matter and not st.main:
            indented = all(ln.startswith("  ") for ln in block)
            if st.group_front:
                front.append(para)
                removed["front_matter_paragraphs"] += 1
                continue
            if not st.group_strong and (len(text.split()) < 12 or verse or indented):
                title_lines.extend(ln.strip() for ln in block)
                removed["title_page_lines"] += len(block)
                continue
            st.main = True
        paras.append(para)
    return paras, removed, title_lines, front
