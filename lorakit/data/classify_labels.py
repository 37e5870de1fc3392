"""Class labels for `lorakit data prepare --task classify`: from book metadata or JSONL records.

Books take their label from a metadata field (``--label author`` by default; ``book``, ``title``,
``translator``, ``gutenberg_id`` or ``source``). A JSONL record takes it from its own field
(``--label label`` by default), at the top level or inside its ``meta`` object, as given: a string
or an integer, one type for every record (1 and "1" would otherwise be two classes that print the
same). Class names are strings; integer labels sort as numbers, so labels 0..K-1 keep their ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from lorakit.data.documents import META_KEYS, Document, Loaded
from lorakit.data.readers import read_source
from lorakit.errors import LorakitError

BOOK_LABEL = "author"
JSONL_LABEL = "label"
BOOK_FIELDS = (*META_KEYS, "source")


@dataclass
class Labels:
    """The class of every labelled document, and what the labelling found."""

    label_field: str  # the field the labels came from
    kind: str  # "str" or "int": the type the labels had in the input
    by_doc: dict[str, str] = field(default_factory=dict)  # doc_id -> class name
    classes: list[str] = field(default_factory=list)  # sorted; a class's id is its index
    unbooked: set[str] = field(default_factory=set)  # JSONL records naming no book: a split by book cannot group them
    unlabelled: dict[str, str] = field(default_factory=dict)  # doc_id -> why it has no class
    skipped: list[str] = field(default_factory=list)  # --skip-bad: unlabelled inputs left out

    def keep_labelled(self, docs: list[Document], skip_bad: bool) -> list[Document]:
        """`docs` without the unlabelled ones (listed in `skipped`); without `skip_bad` one of them raises.

        Run after deduplication: an unlabelled copy of a labelled book is dropped there, not refused.
        """
        for d in docs:
            if d.doc_id in self.unlabelled:
                if not skip_bad:
                    raise LorakitError(self.unlabelled[d.doc_id])
                self.skipped.append(f"skipped: {self.unlabelled[d.doc_id]}")
        return [d for d in docs if d.doc_id not in self.unlabelled]


def _value_type(value: object) -> str | None:
    """'str' or 'int' for a usable label, None for anything else (bool, float, null, list, object)."""
    if isinstance(value, str):
        return "str"
    if isinstance(value, int) and not isinstance(value, bool):
        return "int"
    return None


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def sort_classes(names: Iterable[str], kind: str) -> list[str]:
    """Class names in id order: numeric order for integer labels, else string order."""
    unique = set(names)
    return sorted(unique, key=int) if kind == "int" else sorted(unique)


def _record_field(obj: dict, name: str) -> object:
    if name in obj:
        return obj[name]
    meta = obj.get("meta")
    return meta.get(name) if isinstance(meta, dict) else None


def _jsonl_records(loaded: Loaded) -> dict[str, dict]:
    """The raw JSON object of every JSONL document, by doc_id (``file:line``, as `load_inputs` names them)."""
    wanted = {d.doc_id for d in loaded.docs if d.kind == "jsonl"}
    out: dict[str, dict] = {}
    for entry in loaded.files:
        if entry.get("kind") != "jsonl":
            continue
        for lineno, line in enumerate(read_source(entry["file"]).text.split("\n"), start=1):
            doc_id = f"{entry['file']}:{lineno}"
            if doc_id in wanted:  # the reader parsed and kept this line, so it is a JSON object
                out[doc_id] = json.loads(line)
    return out


def _book_values(docs: list[Document], name: str, missing: dict[str, str]) -> dict[str, object]:
    if name not in BOOK_FIELDS:
        raise LorakitError(f"--label {name}: books have no such metadata field; use one of: {', '.join(BOOK_FIELDS)}")
    if docs and all(_missing(d.meta.get(name)) for d in docs):
        raise LorakitError(f"--label {name}: no book's metadata has a {name} (Gutenberg header or title page); "
                           f"pick a field the books carry, e.g. --label {BOOK_LABEL}")
    values: dict[str, object] = {}
    for d in docs:
        value = d.meta.get(name)
        if _missing(value):
            missing[d.doc_id] = (f"{d.source}: no {name} in its metadata (Gutenberg header or title page), so it "
                                 "has no class; pass a --label every book has, leave the book out, or pass --skip-bad")
        else:
            values[d.doc_id] = value
    return values


def _jsonl_values(docs: list[Document], records: dict[str, dict], name: str,
                  missing: dict[str, str]) -> dict[str, object]:
    if docs and all(_missing(_record_field(records[d.doc_id], name)) for d in docs):
        raise LorakitError(f"--label {name}: no JSONL record has a '{name}' field (top level or in 'meta'; first "
                           f"file {docs[0].source}); each line needs {{\"text\": ..., \"{name}\": CLASS}}, "
                           "or pass --label FIELD")
    values: dict[str, object] = {}
    for d in docs:
        value = _record_field(records[d.doc_id], name)
        if _missing(value):
            missing[d.doc_id] = (f"{d.doc_id}: no '{name}' field, so the record has no class; add one "
                                 "(a string or an integer) or pass --skip-bad")
        elif _value_type(value) is None:
            raise LorakitError(f"{d.doc_id}: label {json.dumps(value)[:40]} is a {type(value).__name__}; "
                               "a label is a string or an integer")
        else:
            values[d.doc_id] = value
    return values


def _check_one_type(values: dict[str, object]) -> str:
    """The labels' one type; a label of another type than the first is refused, naming its file and line."""
    first_id, kind = None, None
    for doc_id, value in values.items():
        this = _value_type(value)
        if kind is None:
            first_id, kind = doc_id, this
        elif this != kind:
            word = {"str": "a string", "int": "an integer"}
            raise LorakitError(f"{doc_id}: label {json.dumps(value)[:40]} is {word[this]} but {first_id} has "
                               f"{word[kind]}; use one type for every label (quote the numbers)")
    return kind or "str"


def label_documents(loaded: Loaded, label: str | None) -> Labels:
    """The class of every document of `loaded`, and why the others have none (`Labels.keep_labelled`).

    Raises LorakitError (one line) for prompt/completion or chat records, books and JSONL mixed
    without an explicit `label`, a field no input has, a label of a type other than string or
    integer, mixed label types, or a single class.
    """
    if loaded.pairs:
        pair = loaded.pairs[0]
        raise LorakitError(f"{pair.source}:{pair.line}: a prompt/completion or chat record; --task classify "
                           "reads records with a 'text' and a label field")
    books = [d for d in loaded.docs if d.kind != "jsonl"]
    jsonl = [d for d in loaded.docs if d.kind == "jsonl"]
    if books and jsonl and label is None:
        raise LorakitError(f"--task classify: books ({books[0].source}) and JSONL records ({jsonl[0].source}) "
                           "take their labels from different fields; pass --label FIELD, or prepare them apart")
    missing: dict[str, str] = {}
    records = _jsonl_records(loaded) if jsonl else {}
    values = _book_values(books, label or BOOK_LABEL, missing) if books else {}
    values.update(_jsonl_values(jsonl, records, label or JSONL_LABEL, missing) if jsonl else {})
    kind = _check_one_type(values)
    names = {doc_id: str(value) for doc_id, value in values.items()}
    classes = sort_classes(names.values(), kind)
    field_name = label or (BOOK_LABEL if books else JSONL_LABEL)
    if len(classes) < 2 and missing:  # the unlabelled inputs may hold the other classes: name one
        raise LorakitError(next(iter(missing.values())))
    if len(classes) < 2:
        found = f"only one class ('{classes[0]}')" if classes else "no class"
        raise LorakitError(f"{found} in the labels ({field_name}); classification needs at least two: "
                           f"add inputs with another {field_name}")
    # the reader names a record's book from its book or title field, else from the file name
    unbooked = {d.doc_id for d in jsonl if all(_missing(_record_field(records[d.doc_id], k)) for k in ("book", "title"))}
    return Labels(field_name, kind, names, classes, unbooked, missing)
