"""Paragraph filters (language, prose) and deduplication of documents, paragraphs and samples."""

from __future__ import annotations

from collections import Counter

import pytest

from lorakit.data.dedup import dedup_documents, dedup_paragraphs, near_duplicate_pairs
from lorakit.data.documents import Document, load_inputs
from lorakit.data.filters import filter_documents, paragraph_reason
from lorakit.data.structure import Para


@pytest.mark.parametrize(
    ("text", "kind", "reason"),
    [
        ("He looked at the window for a long time and then he went out into the street.", "prose", None),
        ("“Merci.”", "prose", None),
        ("Mais, ma chère amie, je vous attendais depuis une heure, et vous ne venez pas!", "prose", "non_english"),
        ("Der Zweck ist nur den Feind zu schwächen, und das ist nicht leicht.", "prose", "non_english"),
        ("Он долго смотрел в окно и думал о своей жизни.", "prose", "non_english"),
        ("1805 1806 1807 1808\n12 14 16 18\n20 22 24 26", "prose", "non_prose"),
        ("Chapter One ........ 12\nChapter Two ........ 34", "prose", "non_prose"),
        ("Name    Age    Town\nIvan    42     Tver", "table", "non_prose"),
        ("1. Bread\n2. Salt\n3. Candles", "list", "non_prose"),
    ],
)
def test_paragraph_filters(text, kind, reason):
    assert paragraph_reason(text, kind) == reason


def _doc(doc_id: str, paras: list[str], **meta) -> Document:
    return Document(doc_id, f"{doc_id}.txt", {"book": doc_id, **meta}, [Para(p, 0) for p in paras], "text")


def test_filter_documents_counts_each_reason(make):
    english = make.prose(1, 3)
    doc = _doc("d", english + ["C'est la vie, mon ami, et nous ne pouvons pas le changer du tout."])
    counts: Counter = Counter()
    filter_documents([doc], counts)
    assert [p.text for p in doc.paras] == english and counts == Counter(non_english=1)


def test_near_duplicate_document_is_dropped_and_names_the_original(library):
    loaded = load_inputs([library])
    kept, dropped = dedup_documents(loaded.docs)
    assert [d["book"] for d in dropped] == ["dup_book1"]
    assert dropped[0]["duplicate_of"].endswith("book1.txt") and dropped[0]["method"] == "minhash"
    assert 0.9 < dropped[0]["similarity"] < 1.0
    assert sorted(d.meta["book"] for d in kept) == ["book1", "book2", "book3", "book4"]


def test_exact_copy_is_dropped_whatever_the_formatting(make):
    paras = make.prose(3, 6)
    a = _doc("a", paras, author="X", title="T", translator="Y", gutenberg_id=1)
    b = _doc("b", [p.upper().replace(" ", "  ") for p in paras])
    kept, dropped = dedup_documents([b, a])
    assert [d.meta["book"] for d in kept] == ["a"]  # the copy with fuller metadata survives
    assert dropped[0]["method"] == "exact" and dropped[0]["duplicate_of"] == "a.txt"


def test_paragraph_dedup_drops_repeats_but_keeps_short_dialogue(make):
    shared = make.prose(4, 1)[0]
    near = shared.replace("the ", "a ", 1)
    a = _doc("a", make.prose(5, 3) + [shared, "“Yes.”", "“Yes.”"])
    b = _doc("b", make.prose(6, 3) + [near, "“Yes.”"])
    counts: Counter = Counter()
    pairs: Counter = Counter()
    dedup_paragraphs([a, b], counts, pairs)
    assert counts == Counter(paragraphs_near=1)
    assert sum(p.text == "“Yes.”" for p in a.paras + b.paras) == 3
    assert shared in [p.text for p in a.paras] and near not in [p.text for p in b.paras]
    assert pairs == Counter({("b", "a"): 1})


def test_near_duplicate_pairs_reports_groups(make):
    base = " ".join(make.prose(7, 3))
    items = [("train", base), ("test", base.replace("old", "aged", 1)), ("test", " ".join(make.prose(8, 3)))]
    pairs = near_duplicate_pairs(items)
    assert [(p["a"], p["b"], p["group_a"], p["group_b"]) for p in pairs] == [(0, 1, "train", "test")]
