"""The shared Gutenberg corpus: every book survives cleaning whole, and the duplicate is caught.

Skipped when ../shared/corpus is absent, a failure in CI (tests/needs.py). Only a few words of
each book are quoted here, to find the paragraph; the comparison is against the book's own raw text.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable

import pytest

from lorakit.data.documents import canonical_author
from lorakit.data.gutenberg import CleanText, clean_gutenberg
from lorakit.data.prepare import prepare_dataset
from lorakit.data.readers import read_source

# file -> (words from its first paragraph, words from its last paragraph)
FIRST_LAST = {
    "chekhov_the_darling_and_other_stories.txt": ("OLENKA, the daughter of the retired", "Let us live, and we shall see"),
    "chekhov_the_lady_with_the_dog_and_other_stories.txt": ("IT was said that a new person", "intoxicating dance-tunes"),
    "dostoevsky_crime_and_punishment.txt": ("On an exceptionally hot evening", "our present story is"),
    "dostoevsky_notes_from_the_underground.txt": ("I am a sick man", "we may stop"),
    "dostoevsky_the_brothers_karamazov.txt": ("Alexey Fyodorovitch Karamazov was the third", "cried once more rapturously"),
    "dostoevsky_the_idiot.txt": ("Towards the end of November, during a thaw", "as she took leave of Evgenie"),
    "dostoevsky_the_possessed.txt": ("IN UNDERTAKING to describe the recent", "rejected all idea of insanity"),
    "gogol_dead_souls.txt": ("To the door of an inn in the provincial", "comes abruptly to an end"),
    "gogol_taras_bulba_and_other_tales.txt": ("Turn round, my boy! How ridiculous", "went off with his officers"),
    "tolstoy_anna_karenina.txt": ("Happy families are all alike", "the power to put into it"),
    "tolstoy_resurrection.txt": ("Though hundreds of thousands had done", "end time alone will prove"),
    "tolstoy_the_kreutzer_sonata_and_other_stories.txt": ("Travellers left and entered our car", "but in goodness"),
    "tolstoy_war_and_peace.txt": ("Well, Prince, so Genoa and Lucca", "of which we are not"),
    "turgenev_fathers_and_sons.txt": ("Well, Peter? Cannot you see them yet", "which shall have no End"),
    "turgenev_on_the_eve.txt": ("On one of the hottest days of the summer", "into the far distance"),
}


def _raw_paragraph(raw: str, words: str, last: bool = False) -> str:
    """The raw paragraph (blank-line delimited) holding `words`, unwrapped, without italics marks and
    footnote references (the two things cleaning is meant to take out of a paragraph)."""
    hits = [m.start() for m in re.finditer(r"\s+".join(map(re.escape, words.split())), raw)]
    at = hits[-1] if last else hits[0]
    start = raw.rfind("\n\n", 0, at) + 2
    end = raw.find("\n\n", at)
    block = raw[start : end if end >= 0 else len(raw)]
    block = re.sub(r"\s?\[\d{1,3}\]", "", block)
    return re.sub(r"\s+", " ", block).replace("_", "").strip()


def _manifest(corpus) -> list[dict]:
    with (corpus / "MANIFEST.tsv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def cleaned(corpus) -> Callable[[str], tuple[str, CleanText]]:
    """`name -> (raw text, clean_gutenberg(raw text))`, each book read and cleaned once for this
    module: both tests below go through every book, and cleaning is deterministic."""
    done: dict[str, tuple[str, CleanText]] = {}

    def get(name: str) -> tuple[str, CleanText]:
        if name not in done:
            raw = read_source(corpus / name).text
            done[name] = (raw, clean_gutenberg(raw))
        return done[name]

    return get


def test_fifteen_books_keep_their_first_and_last_paragraphs(cleaned):
    assert len(FIRST_LAST) == 15
    for name, (first, last) in FIRST_LAST.items():
        raw, book = cleaned(name)
        paras = book.paras
        assert paras[0].text == _raw_paragraph(raw, first), name
        assert paras[-1].text == _raw_paragraph(raw[: raw.rindex("END OF")], last, last=True), name
        assert not any("Project Gutenberg" in p.text for p in paras), name


def test_metadata_matches_the_manifest(corpus, cleaned):
    for row in _manifest(corpus):
        meta = cleaned(row["file"])[1].meta
        assert meta["gutenberg_id"] == int(row["gutenberg_id"]), row["file"]
        assert canonical_author(meta["author"]) == canonical_author(row["author"]), row["file"]
        title = row["title"].lower()
        assert meta["title"].lower().startswith(title), row["file"]
        if row["translator"]:
            assert meta["translator"] == row["translator"], row["file"]


def test_prepare_subset_drops_the_near_duplicate(corpus, tmp_path, tokenizer):
    names = ["dostoevsky_crime_and_punishment.txt", "dup_dostoevsky_crime_and_punishment.txt",
             "dostoevsky_notes_from_the_underground.txt", "chekhov_the_lady_with_the_dog_and_other_stories.txt",
             "turgenev_on_the_eve.txt"]
    report = prepare_dataset([corpus / n for n in names], tmp_path / "ds", tokenizer, fmt="instruct", seq_len=512)
    (dup,) = report["duplicates"]["documents"]
    assert dup["file"].endswith("dup_dostoevsky_crime_and_punishment.txt")
    assert dup["duplicate_of"].endswith("/dostoevsky_crime_and_punishment.txt") and dup["similarity"] > 0.99
    books = [set(report["splits"][s]["books"]) for s in ("train", "valid", "test")]
    assert all(books) and not (books[0] & books[1]) and not (books[0] & books[2]) and not (books[1] & books[2])
    assert "dup_dostoevsky_crime_and_punishment" not in set().union(*books)
    assert report["lint"]["ok"] and report["leakage"]["pairs_found"] == 0
    assert max(report["lint"]["length_histogram"]["edges"]) == 512
