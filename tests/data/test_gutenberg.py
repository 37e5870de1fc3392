"""Gutenberg cleaning: markers, metadata, structure, unwrapping, whitespace."""

from __future__ import annotations

import pytest

from lorakit.data.documents import canonical_author, load_inputs
from lorakit.data.gutenberg import clean_gutenberg, clean_plain, is_gutenberg

BOILERPLATE = ("Project Gutenberg", "START OF", "END OF", "SMALL PRINT", "Produced by", "This file should be named",
               "Release Date", "CONTENTS", "CHAPTER", "Illustration", "Transcriber", "By Ivan", "Translated by")


@pytest.mark.parametrize("variant", ["modern", "unspaced", "old"])
def test_header_and_licence_are_stripped_for_every_marker_variant(make, variant):
    chapters = make.chapters(7)
    text = make.gutenberg_text("The Quiet House", "Ivan Petrovsky", 4321, chapters, translator="A. Translator",
                               variant=variant)
    clean = clean_gutenberg(text)
    body = "\n\n".join(p.text for p in clean.paras)
    for marker in BOILERPLATE:
        assert marker not in body, marker
    # nothing of the story is lost: first and last paragraphs intact, every paragraph kept
    assert clean.paras[0].text == chapters[0][0]
    assert clean.paras[-1].text == chapters[-1][-1]
    assert [p.text for p in clean.paras] == [p for ch in chapters for p in ch]


@pytest.mark.parametrize("variant", ["modern", "unspaced"])
def test_metadata_is_read_from_the_header(make, variant):
    text = make.gutenberg_text("The Quiet House", "Ivan Petrovsky", 4321, make.chapters(1), translator="A. Translator",
                               variant=variant)
    meta = clean_gutenberg(text).meta
    assert meta["title"] == "The Quiet House" and meta["author"] == "Ivan Petrovsky"
    assert meta["translator"] == "A. Translator" and meta["gutenberg_id"] == 4321


def test_old_small_print_header_gives_title_author_and_id(make):
    meta = clean_gutenberg(make.gutenberg_text("Old Tales", "Anton Tchekhov", 77, make.chapters(2), variant="old")).meta
    assert (meta["title"], meta["author"], meta["gutenberg_id"]) == ("Old Tales", "Anton Tchekhov", 77)


def test_metadata_without_header_comes_from_start_line_and_title_page(make):
    text = make.gutenberg_text("Crime Story", "Fyodor Dostoevsky", 2554, make.chapters(3), translator="Jane Doe")
    headless = text[text.index("*** START"):].replace("EBOOK CRIME STORY", "EBOOK 2554", 1)
    meta = clean_gutenberg(headless).meta
    assert meta["gutenberg_id"] == 2554 and meta["author"] == "Fyodor Dostoevsky"
    assert meta["title"] == "Crime Story" and meta["translator"] == "Jane Doe"


def test_chapter_headings_become_section_breaks_not_text(make):
    chapters = make.chapters(5, n_chapters=3, paras=4)
    clean = clean_gutenberg(make.gutenberg_text("T", "A B", 1, chapters))
    sections = [p.section for p in clean.paras]
    assert sections == sorted(sections) and len(set(sections)) == 3
    assert clean.removed["headings"] >= 3 and clean.removed["toc_lines"] >= 4
    assert clean.removed["illustrations"] == 1 and clean.removed["transcriber_notes"] == 1


def test_hard_wrapped_lines_become_paragraphs_and_whitespace_is_normalised():
    raw = ("CHAPTER I\n\nHe  walked   slowly to the _old_ bridge,[1] and the river\n"
           "was grey and well-\nknown to him; a  long-\nforgotten tune came back.\n\n"
           "   Tall poplars by the road,\n   Wind across the field;\n   Who will sing tonight?\n\n"
           "She  said nothing.\u00a0Then she went home.\n")
    paras = clean_plain(raw).paras
    assert [p.text for p in paras] == [
        "He walked slowly to the old bridge, and the river was grey and well-known to him; "
        "a long-forgotten tune came back.",
        "Tall poplars by the road,\nWind across the field;\nWho will sing tonight?",
        "She said nothing. Then she went home.",
    ]
    assert paras[1].verse and not paras[0].verse


def test_footnotes_and_glosses_are_dropped_but_bracketed_paragraphs_stay():
    raw = ("CHAPTER I\n\nThe troikas [sledges drawn by three horses] were ready,* and he left.\n\n"
           "* A custom of the time.\n\n[The editor adds that the diary ends here.]\n\n"
           "FOOTNOTES\n\n[1] A note at the end.\n\n2 Another note.\n")
    clean = clean_plain(raw)
    assert [p.text for p in clean.paras] == ["The troikas were ready, and he left.",
                                             "[The editor adds that the diary ends here.]"]
    assert clean.removed["footnotes"] >= 2 and clean.removed["bracketed_glosses"] == 1


def test_translators_preface_is_front_matter(make):
    chapters = make.chapters(9, n_chapters=2, paras=6)
    text = make.gutenberg_text("T", "A B", 5, chapters, extras=False)
    preface = "\n\nTRANSLATOR'S PREFACE\n\n" + make.wrap(make.prose(99, 2)) + "\n\n"
    text = text.replace("CONTENTS", preface + "CONTENTS", 1)
    dropped = clean_gutenberg(text)
    assert dropped.paras[0].text == chapters[0][0] and dropped.removed["front_matter_paragraphs"] == 2
    kept = clean_gutenberg(text, keep_front_matter=True)
    assert kept.paras[0].text == make.prose(99, 2)[0] and len(kept.paras) == len(dropped.paras) + 2


def test_is_gutenberg_and_plain_text_pass_through():
    assert is_gutenberg("*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody\n")
    assert not is_gutenberg("Just my own story.\n\nIt has two paragraphs.\n")
    assert [p.text for p in clean_plain("Just my own\nstory.\n\nIt has two paragraphs.\n").paras] == [
        "Just my own story.", "It has two paragraphs."]


def test_author_spellings_are_unified():
    assert canonical_author("Leo Tolstoi") == canonical_author("Count Leo Tolstoy") == "Leo Tolstoy"
    assert canonical_author("Feodor Dostoevsky") == canonical_author("Fyodor Dostoyevsky") == "Fyodor Dostoevsky"
    assert canonical_author("Jane Austen") == "Jane Austen"


def test_crlf_bom_latin1_books_load_with_metadata(make, tmp_path):
    text = make.gutenberg_text("Caf\u00e9 Stories", "Ivan Turgenieff", 9, make.chapters(4, 1, 3))
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    (tmp_path / "latin.txt").write_bytes(text.encode("latin-1"))
    loaded = load_inputs([tmp_path])
    by_name = {f["book"]: f for f in loaded.files}
    assert by_name["crlf"]["newlines"] == "crlf" and by_name["crlf"]["bom"]
    assert by_name["latin"]["encoding"] in ("cp1252", "latin-1")
    assert [d.meta["title"] for d in loaded.docs] == ["Caf\u00e9 Stories"] * 2
    assert {d.meta["author"] for d in loaded.docs} == {"Ivan Turgenev"}
    assert loaded.docs[0].text == loaded.docs[1].text
