"""`lorakit data prepare --task classify`: labelled passages, stratified splits by book, class lint.

The real corpus (a subset: two books per author plus the deliberate near-duplicate) is prepared
once for the module; the other tests use small synthetic books and JSONL records.
"""

from __future__ import annotations

import csv
import json

import pytest

from lorakit.cli import main
from lorakit.data import cli as data_cli
from lorakit.data.classify import BALANCE, prepare_classify
from lorakit.data.documents import canonical_author
from lorakit.data.lint import lint_dataset
from lorakit.data.schema import read_rows
from lorakit.data.splits import SPLITS
from lorakit.errors import LorakitError

SEQ = 256
BOOKS = ["tolstoy_the_kreutzer_sonata_and_other_stories.txt", "tolstoy_resurrection.txt",
         "dostoevsky_notes_from_the_underground.txt", "dostoevsky_crime_and_punishment.txt",
         "dup_dostoevsky_crime_and_punishment.txt", "gogol_taras_bulba_and_other_tales.txt", "gogol_dead_souls.txt",
         "turgenev_fathers_and_sons.txt", "turgenev_on_the_eve.txt", "chekhov_the_darling_and_other_stories.txt",
         "chekhov_the_lady_with_the_dog_and_other_stories.txt"]


def _splits(out) -> dict[str, list[dict]]:
    return {name: read_rows(out / f"{name}.jsonl", "prepared").rows for name in SPLITS}


@pytest.fixture(scope="module")
def by_author(corpus, tokenizer, tmp_path_factory):
    """The corpus subset prepared by author: (folder, report, splits)."""
    out = tmp_path_factory.mktemp("classify") / "ds"
    report = prepare_classify([corpus / n for n in BOOKS], out, tokenizer, seq_len=SEQ, val_fraction=0.1,
                              test_fraction=0.1)
    return out, report, _splits(out)


def test_corpus_every_author_in_train_and_test_from_unseen_books(corpus, by_author):
    out, report, splits = by_author
    with (corpus / "MANIFEST.tsv").open(encoding="utf-8") as fh:
        authors = {row["file"]: canonical_author(row["author"]) for row in csv.DictReader(fh, delimiter="\t")}
    assert report["task"] == "classify" and report["label_field"] == "author" and report["label_type"] == "str"
    assert report["classes"] == sorted({authors[n] for n in BOOKS})
    (dup,) = report["duplicates"]["documents"]
    assert dup["file"].endswith("/dup_dostoevsky_crime_and_punishment.txt")
    books = {name: {r["meta"]["book"] for r in rows} for name, rows in splits.items()}
    assert not (books["train"] & books["test"]) and not (books["valid"] & books["test"])
    assert "dup_dostoevsky_crime_and_punishment" not in set().union(*books.values())
    # an author with two books (one for test, one for train) is scored in valid on its training book's
    # closing passages: after every passage of that book that trains, and named in the report
    cut = report["split_info"]["valid_cut_from_train"]
    assert cut and books["train"] & books["valid"] == set(cut)
    assert all(report["class_counts"]["valid"].values())
    for book, n in cut.items():
        order = {name: [r["meta"]["passage"] for r in splits[name] if r["meta"]["book"] == book] for name in SPLITS}
        assert 0 < len(order["valid"]) <= n and max(order["train"]) < min(order["valid"])
    assert any("closing passages of a training book" in w for w in report["warnings"])
    assert not any("appear in more than one split" in w for w in report["warnings"])  # on purpose: not leakage
    for name, rows in splits.items():
        counts = {c: sum(1 for r in rows if r["label"] == c) for c in report["classes"]}
        assert report["class_counts"][name] == counts
    assert all(report["class_counts"]["train"].values()) and all(report["class_counts"]["test"].values())
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["classes"] == report["classes"]


def test_corpus_rows_are_token_exact_passages(by_author, tokenizer):
    _, report, splits = by_author
    rows = [r for name in SPLITS for r in splits[name]]
    assert report["special_tokens_reserved"] >= 0
    assert all(len(r["input_ids"]) <= SEQ - report["special_tokens_reserved"] for r in rows)
    assert all(r["task"] == "classify" and r["meta"]["task"] == "classify" for r in rows)
    assert all(r["label"] == r["meta"]["author"] and r["prompt"] == "" and r["completion"] == r["text"]
               and r["prompt_len"] == 0 for r in rows)
    texts = [r["text"] for r in rows]
    assert tokenizer.batch_decode([r["input_ids"] for r in rows]) == texts
    some = rows[::9]  # the passage's own tokens, no special ones (a sample of rows keeps this test quick)
    assert tokenizer([r["text"] for r in some], add_special_tokens=False)["input_ids"] == [r["input_ids"] for r in some]
    # cut on paragraph boundaries: no passage starts or ends inside a paragraph's whitespace
    assert all(t == t.strip() and "\n\n\n" not in t for t in texts)


def test_corpus_dataset_passes_the_class_lint(by_author):
    _, report, _ = by_author
    lint = report["lint"]
    assert lint["ok"] and lint["classify"]["classes"] == report["classes"]
    assert lint["classify"]["counts"] == report["class_counts"]
    assert report["balance"] == {"mode": "none", "ratio": lint["classify"]["balance_ratio"]}
    assert report["class_weights"] is None


def _books(make, folder, specs, chapters=None):
    folder.mkdir()
    for i, (title, author, translator, seed) in enumerate(specs):
        n = chapters[i] if chapters else 3
        text = make.gutenberg_text(title, author, 500 + i, make.chapters(seed, n, 6), translator=translator)
        (folder / f"b{i}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def unequal(make, tmp_path):
    """Six synthetic books: Ivan Petrovsky 4 of three chapters, Marya Volkova 2 of one chapter."""
    return _books(make, tmp_path / "books", [("The Quiet House", "Ivan Petrovsky", None, 1),
                                             ("Winter Roads", "Ivan Petrovsky", None, 2),
                                             ("Late Frost", "Ivan Petrovsky", None, 3),
                                             ("The Mill", "Ivan Petrovsky", None, 6),
                                             ("The Letter", "Marya Volkova", None, 4),
                                             ("Short Notes", "Marya Volkova", None, 5)], [3, 3, 3, 3, 1, 1])


def test_a_class_with_one_book_is_cut_in_reading_order(library, tmp_path, tokenizer):
    out = tmp_path / "ds"
    report = prepare_classify([library], out, tokenizer, label="book", seq_len=128, val_fraction=0.2,
                              test_fraction=0.2)
    splits = _splits(out)
    assert report["classes"] == ["book1", "book2", "book3", "book4"]  # the duplicate's own class is left out
    assert any("left out" in w and "dup_book1" in w for w in report["warnings"])
    assert any("single book" in w for w in report["warnings"])
    for cls in report["classes"]:
        order = {name: [r["meta"]["passage"] for r in splits[name] if r["label"] == cls] for name in SPLITS}
        assert order["train"] and order["valid"] and order["test"]
        assert max(order["train"]) < min(order["valid"]) and max(order["valid"]) < min(order["test"])


@pytest.mark.parametrize("balance", ["downsample", "weights"])
def test_balance_modes(unequal, tmp_path, tokenizer, balance):
    kw = dict(seq_len=128, val_fraction=0.1, test_fraction=0.2)
    plain = prepare_classify([unequal], tmp_path / "plain", tokenizer, **kw)
    report = prepare_classify([unequal], tmp_path / "ds", tokenizer, balance=balance, **kw)
    before, after = plain["class_counts"]["train"], report["class_counts"]["train"]
    assert len(set(before.values())) > 1  # the fixture is unbalanced
    for name in ("valid", "test"):  # held-out splits are never balanced
        assert _splits(tmp_path / "ds")[name] == _splits(tmp_path / "plain")[name]
    if balance == "downsample":
        assert set(after.values()) == {min(before.values())}
        assert report["balance"]["train_before"] == before
        train = _splits(tmp_path / "ds")["train"]
        assert all(row in _splits(tmp_path / "plain")["train"] for row in train)
        assert report["class_weights"] is None
    else:
        weights = report["class_weights"]
        assert after == before and len(weights) == len(report["classes"])
        assert sum(weights) / len(weights) == pytest.approx(1)
        products = [w * before[c] for w, c in zip(weights, report["classes"])]
        assert products == pytest.approx([products[0]] * len(products))


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_jsonl_labels_as_given_split_by_sample(make, tmp_path, tokenizer):
    paras = make.prose(40, 30, sentences=2)
    labels = ["calm", "storm", "fog"]
    rows = [{"text": p, "label": labels[i % 3]} for i, p in enumerate(paras[:27])]
    rows += [{"text": p, "meta": {"label": "fog"}} for p in paras[27:]]  # a label inside meta counts too
    src = _jsonl(tmp_path / "weather.jsonl", rows)
    report = prepare_classify([src], tmp_path / "ds", tokenizer, seq_len=128, val_fraction=0.2, test_fraction=0.2)
    assert report["classes"] == ["calm", "fog", "storm"] and report["split_info"]["mode"] == "sample"
    given = {r["text"]: r.get("label") or r["meta"]["label"] for r in rows}
    splits = _splits(tmp_path / "ds")
    assert all(given[r["text"]] == r["label"] for name in SPLITS for r in splits[name])
    assert all(report["class_counts"]["train"].values()) and all(report["class_counts"]["test"].values())


def test_jsonl_integer_labels_sort_as_numbers(make, tmp_path, tokenizer):
    rows = [{"text": p, "label": i % 12} for i, p in enumerate(make.prose(41, 36, sentences=2))]
    report = prepare_classify([_jsonl(tmp_path / "n.jsonl", rows)], tmp_path / "ds", tokenizer, seq_len=128,
                              val_fraction=0, test_fraction=0.3)
    assert report["label_type"] == "int" and report["classes"] == [str(i) for i in range(12)]


def test_jsonl_with_a_book_field_splits_by_book(make, tmp_path, tokenizer):
    rows = [{"text": p, "label": "ab"[b % 2], "book": f"notes{b}"}
            for b in range(6) for p in make.prose(50 + b, 4, sentences=2)]
    report = prepare_classify([_jsonl(tmp_path / "b.jsonl", rows)], tmp_path / "ds", tokenizer, seq_len=128,
                              val_fraction=0.2, test_fraction=0.2)
    books = {name: set(report["splits"][name]["books"]) for name in SPLITS}
    assert report["split_info"]["mode"] == "book" and all(books.values())
    assert not (books["train"] & books["test"]) and not (books["train"] & books["valid"])


def _refused(match, inputs, tokenizer, *, out, **kw):
    with pytest.raises(LorakitError, match=match) as err:
        prepare_classify(inputs, out, tokenizer, **kw)
    assert "\n" not in str(err.value) and not out.exists()


def test_bad_jsonl_labels_are_refused_in_one_line(make, tmp_path, tokenizer):
    paras = make.prose(60, 8, sentences=2)
    cases = [
        ([{"text": paras[0], "label": "a"}, {"text": paras[1], "label": "b"}, {"text": paras[2]}],
         {}, r"m0\.jsonl:3: no 'label' field"),
        ([{"text": paras[0], "label": "a"}, {"text": paras[1], "label": 1}], {},
         r"m1\.jsonl:2: label 1 is an integer but .*m1\.jsonl:1 has a string"),
        ([{"text": paras[0], "label": "a"}, {"text": paras[1], "label": 0.5}], {}, r"m2\.jsonl:2: label 0\.5 is a float"),
        ([{"text": p, "label": "only"} for p in paras], {}, r"only one class \('only'\)"),
        ([{"text": p, "label": "a"} for p in paras], {"label": "genre"}, r"--label genre: no JSONL record has"),
        ([{"prompt": "Say:", "completion": paras[0], "label": "a"}], {}, r"m5\.jsonl:1: a prompt/completion"),
    ]
    for i, (rows, kw, match) in enumerate(cases):
        src = _jsonl(tmp_path / f"m{i}.jsonl", rows)
        _refused(match, [src], tokenizer, out=tmp_path / f"ds{i}", seq_len=128, **kw)


def test_a_class_with_no_training_example_is_refused(make, tmp_path, tokenizer):
    rows = [{"text": p, "label": "a" if i % 2 else "b"} for i, p in enumerate(make.prose(70, 12, sentences=2))]
    rows += [{"text": "Je ne sais pas pourquoi il est parti si vite, mais elle est restée avec nous.", "label": "fr"}]
    src = _jsonl(tmp_path / "fr.jsonl", rows)
    _refused(r"class 'fr' has no training example.*non_english", [src], tokenizer, out=tmp_path / "ds", seq_len=128)


def test_bad_book_labels_are_refused_in_one_line(make, tmp_path, tokenizer):
    books = _books(make, tmp_path / "books", [("The Letter", "Marya Volkova", "A. Translator", 4),
                                              ("A Small Garden", "Pavel Orlov", None, 5)])
    _refused(r"--label genre: books have no such metadata field", [books], tokenizer, out=tmp_path / "a",
             label="genre", seq_len=128)
    _refused(r"b1\.txt: no translator in its metadata", [books], tokenizer, out=tmp_path / "b", label="translator",
             seq_len=128)
    _refused(r"only one class \('Marya Volkova'\)", [books / "b0.txt"], tokenizer, out=tmp_path / "c",
             seq_len=128)
    rows = [{"text": "The road was long and the snow was deep and the night was cold.", "label": "x"}]
    _refused(r"pass --label FIELD", [books, _jsonl(tmp_path / "x.jsonl", rows)], tokenizer, out=tmp_path / "d",
             seq_len=128)


def test_lint_finds_unseen_test_labels_and_imbalance(tmp_path, make, capsys):
    folder = tmp_path / "hand"
    folder.mkdir()
    paras = make.prose(80, 20)

    def row(text, label):
        return {"task": "classify", "text": text, "label": label, "meta": {"book": label}}

    splits = {"train": [row(p, "big") for p in paras[:12]] + [row(paras[12], "small")],
              "valid": [], "test": [row(paras[13], "big"), row(paras[14], "ghost")]}
    for name, rows in splits.items():
        _jsonl(folder / f"{name}.jsonl", [json.dumps(r) for r in rows] or [""])
    lint = lint_dataset(folder)
    assert not lint["ok"] and lint["classify"]["classes"] == ["big", "ghost", "small"]
    assert any(f.startswith("test: label 'ghost' (1 sample(s)) never appears in train") for f in lint["fatal"])
    assert any(w.startswith("class balance: train's largest class 'big' has 12.0x") for w in lint["warnings"])
    (folder / "report.json").write_text(json.dumps({"task": "classify", "classes": ["big", "ghost", "small", "x"]}))
    assert any(f.startswith("class 'x' has no training example") for f in lint_dataset(folder)["fatal"])
    assert main(["data", "lint", str(folder)]) == 1
    assert "FATAL: test: label 'ghost'" in capsys.readouterr().out


def test_cli_prepare_classify(unequal, tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(["data", "prepare", "--task", "classify", "--label", "author", "--input", str(unequal),
                 "--out", str(out), "--seq-len", "128", "--balance", "weights"])
    printed = capsys.readouterr().out
    assert code == 0 and "classes (2, from author): Ivan Petrovsky, Marya Volkova" in printed
    assert "class weights" in printed and json.loads((out / "report.json").read_text())["class_weights"]
    lint = lint_dataset(out)  # `lorakit data lint` reads a classify dataset back
    assert lint["ok"] and lint["classify"]["counts"] == json.loads((out / "report.json").read_text())["class_counts"]
    assert main(["data", "lint", str(out)]) == 0 and capsys.readouterr().out.splitlines()[-1] == "ok"
    for argv in (["--task", "classify", "--format", "chat"], ["--balance", "weights"], ["--label", "author"]):
        code = main(["data", "prepare", *argv, "--input", str(unequal), "--out", str(tmp_path / "no")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and not (tmp_path / "no").exists()
    assert data_cli.BALANCE == BALANCE
