"""`data lint` on hand-written datasets: every check finds what it should, fatal problems exit 1."""

from __future__ import annotations

import json

import pytest

from lorakit.cli import main
from lorakit.data.schema import read_rows
from lorakit.data.lint import lint_dataset
from lorakit.errors import LorakitError


def _write(folder, name, rows):
    folder.mkdir(exist_ok=True)
    with (folder / name).open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")


def _row(text, author="Anna Writer", book="b1", prompt=None):
    row = {"text": text, "meta": {"author": author, "book": book}}
    if prompt is not None:
        row.update(prompt=prompt, completion=text, text=prompt + text)
    return row


def test_hand_written_dataset_problems_are_found(make, tmp_path):
    clean = make.prose(1, 30)
    rows = [_row(p, prompt=f"Continue the story of {p.split()[0]}:\n") for p in clean[:24]]
    rows += [
        _row("He said  nothing and  left the room quietly."),  # double spaces
        _row("She read <i>the letter</i> twice before she burned it."),  # markup
        _row("The cafÃ© was closed when they arrived that night."),  # mojibake
        _row("A bell rang\x07 somewhere in the house at midnight."),  # control character
        _row("“Go away,” she said.” And then she was gone again."),  # unbalanced quotes
    ]
    _write(tmp_path, "train.jsonl", rows)
    _write(tmp_path, "test.jsonl", [_row(clean[3], author="Boris Other", book="b2"),  # leaked passage
                                    _row(clean[25], author="Boris Other", book="b2")])
    report = lint_dataset(tmp_path)
    counts = report["formatting"]["counts"]
    for issue in ("double_spaces", "markup", "mojibake", "control_chars", "unbalanced_quotes"):
        assert counts.get(issue) == 1, issue
    assert report["leakage"]["pairs"] == 1
    assert report["authors"]["Anna Writer"]["share"] > 0.5
    warnings = " | ".join(report["warnings"])
    assert "imbalance: Anna Writer" in warnings
    assert "prompt template over-represented" in warnings and "Continue the story of X:" in warnings
    assert "no input_ids" in warnings and report["tokens_estimated"]
    assert report["ok"] and not report["fatal"]  # usable, with warnings


def test_bad_lines_and_empty_train_are_fatal(tmp_path, capsys):
    _write(tmp_path, "train.jsonl", [_row("Fine text of a reasonable length for a sample."), "{broken json", {"x": 1}])
    report = lint_dataset(tmp_path)
    assert not report["ok"] and report["fatal"][0].startswith("2 bad line(s), first:")
    assert [e["line"] for e in report["schema_errors"]] == [2, 3]
    assert main(["data", "lint", str(tmp_path)]) == 1
    assert "FATAL" in capsys.readouterr().out

    empty = tmp_path / "empty"
    _write(empty, "train.jsonl", [])
    assert lint_dataset(empty)["fatal"] == ["the dataset has no samples"]


def test_inconsistent_tokenized_sample_is_fatal(tmp_path):
    _write(tmp_path, "train.jsonl", [
        {"text": "Ab", "prompt": "A", "completion": "b", "input_ids": [1, 2], "prompt_len": 5, "meta": {}},
        {"text": "Xy", "prompt": "A", "completion": "b", "input_ids": [1], "prompt_len": 0, "meta": {}},
    ])
    report = lint_dataset(tmp_path)
    assert not report["ok"]
    messages = [e["message"] for e in report["schema_errors"]]
    assert "prompt_len" in messages[0] and "'text' is not 'prompt' + 'completion'" in messages[1]


def test_prepared_dataset_lints_clean_and_ids_match_tokenizer(library, tmp_path, tokenizer):
    from lorakit.data.prepare import prepare_dataset

    out = tmp_path / "ds"
    prepare_dataset([library], out, tokenizer, fmt="chat", seq_len=256, val_fraction=0.2, test_fraction=0.2)
    report = lint_dataset(out, tokenizer)
    assert report["ok"] and not any("decode" in w for w in report["warnings"])
    assert report["total"]["samples"] == sum(r["samples"] for r in report["splits"].values())
    assert sum(report["length_histogram"]["counts"]) == report["total"]["samples"]


def test_reading_a_prepared_split_is_strict(tmp_path):
    _write(tmp_path, "train.jsonl", [{"text": "no tokens here"}])
    with pytest.raises(LorakitError, match=r"train\.jsonl line 1: missing prompt, completion, input_ids"):
        read_rows(tmp_path / "train.jsonl", "prepared")
    with pytest.raises(LorakitError, match=r"valid\.jsonl: not found; run `lorakit data prepare --out .*` first"):
        read_rows(tmp_path / "valid.jsonl", "prepared")
