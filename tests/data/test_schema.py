"""The prepared-row schema: writing then reading gives the same rows, every bad line is one clear
line naming file and line, and training, evaluation and lint judge a bad file alike."""

from __future__ import annotations

import json
import os
import random

import pytest

from lorakit.data.lint import lint_dataset
from lorakit.data.schema import REQUIRED, BadLine, read_rows, row_problems, sample_of, write_rows
from lorakit.errors import LorakitError
from lorakit.eval.dataset import read_split
from lorakit.train.batches import load_samples

UNICODE = ["plain", "", "café naïve", "Анна Каренина", "東京の雨", "مرحبا", "😀 emoji 👩‍👩‍👧", "e\u0301 combining",
           "line\nbreak\ttab\r", "\u2028separator\u2029", "\x85next line", "quote \" and \\ backslash", "\x00nul\x7f"]


def _row(prompt: str = "Say it:\n", completion: str = "It was so.", ids: list[int] | None = None, **extra) -> dict:
    ids = [1, 2, 3, 4, 5] if ids is None else ids
    row = {"text": prompt + completion, "prompt": prompt, "completion": completion, "input_ids": ids,
           "prompt_len": min(2, len(ids)), "meta": {"book": "b1", "author": "A. Writer", "task": "continue"}}
    row.update(extra)
    return row


def _random_text(rng: random.Random) -> str:
    pieces = [rng.choice(UNICODE)]
    for _ in range(rng.randint(0, 12)):
        cp = rng.randint(0, 0x10FFFF)
        if not 0xD800 <= cp <= 0xDFFF:  # lone surrogates are not text
            pieces.append(chr(cp))
    return "".join(pieces)


def _random_row(rng: random.Random) -> dict:
    prompt, completion = _random_text(rng), _random_text(rng)
    ids = [rng.randint(0, 2**31) for _ in range(rng.randint(0, 40))]
    row = _row(prompt, completion, ids, prompt_len=rng.randint(0, len(ids)))
    row["meta"] = {"book": _random_text(rng), "gutenberg_id": rng.choice([None, rng.randint(1, 99999)]),
                   "nested": {"k": [1.5, True, None]}}
    if rng.random() < 0.3:
        row["messages"] = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return row


@pytest.mark.parametrize("seed", range(8))
def test_write_then_read_gives_the_same_rows(tmp_path, seed):
    rng = random.Random(seed)
    rows = [_random_row(rng) for _ in range(rng.randint(0, 30))] + [_row(p, c) for p in UNICODE for c in UNICODE[:3]]
    path = write_rows(tmp_path / "train.jsonl", rows)
    read = read_rows(path, "prepared")
    assert read.rows == rows and not read.bad
    assert read.lines == list(range(1, len(rows) + 1))  # one row per line, whatever the text holds
    assert write_rows(tmp_path / "again.jsonl", read.rows).read_bytes() == path.read_bytes()


def test_blank_lines_bom_and_crlf_are_read(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_row()).encode() + b"\r\n\r\n  \n" + json.dumps(_row("a", "b")).encode())
    read = read_rows(path, "prepared")
    assert [r["prompt"] for r in read.rows] == ["Say it:\n", "a"] and read.lines == [1, 4]


BAD_LINES = {  # kind -> the raw third line, and what its message says
    "not JSON": (b'{"text": "cut off', "not JSON"),
    "not an object": (b'[1, 2, 3]', "not a JSON object (list)"),
    "non-UTF-8": (b'{"text": "caf\xe9"}', "not UTF-8"),
    "ids of the wrong type": (json.dumps(_row(ids=["1", "2"])).encode(), "'input_ids' must be a list of integers"),
    "ids null": (json.dumps(_row(ids=None) | {"input_ids": None}).encode(), "'input_ids' must be a list of integers"),
    "prompt_len past the ids": (json.dumps(_row(prompt_len=9)).encode(), "'prompt_len' 9 is not between 0"),
    "prompt_len a string": (json.dumps(_row(prompt_len="2")).encode(), "'prompt_len' '2' is not between 0"),
    "meta not an object": (json.dumps(_row(meta="b1")).encode(), "'meta' must be an object"),
    "text not a string": (json.dumps(_row(completion="x") | {"text": 42}).encode(), "'text' must be a string"),
}


def _bad_dataset(root, raw: bytes):
    root.mkdir(parents=True, exist_ok=True)
    good = b"".join(json.dumps(_row(completion=f"Line {i}.")).encode() + b"\n" for i in range(2))
    for name in ("train", "test"):
        (root / f"{name}.jsonl").write_bytes(good + raw + b"\n" + good)
    return root


def _one_line_error(call) -> str:
    with pytest.raises(LorakitError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", BAD_LINES)
def test_every_bad_line_is_one_line_naming_file_line_and_fix(tmp_path, kind):
    raw, says = BAD_LINES[kind]
    path = _bad_dataset(tmp_path / "data", raw) / "train.jsonl"
    message = _one_line_error(lambda: read_rows(path, "tokens"))
    assert message.startswith(f"{path} line 3: ") and says in message
    assert f"re-run `lorakit data prepare --out {path.parent}`" in message
    lenient = read_rows(path, "tokens", lenient=True)
    assert len(lenient.rows) == 4 and lenient.lines == [1, 2, 4, 5]
    assert lenient.bad == [BadLine(path, 3, lenient.bad[0].problem)] and lenient.bad[0].message == message


@pytest.mark.parametrize("kind", BAD_LINES)
def test_training_eval_and_lint_give_the_same_verdict(tmp_path, kind):
    data = _bad_dataset(tmp_path / "data", BAD_LINES[kind][0])
    trained = _one_line_error(lambda: load_samples(data / "train.jsonl"))
    evaluated = _one_line_error(lambda: read_split(data, "train"))
    report = lint_dataset(data)
    assert trained == evaluated
    assert not report["ok"] and report["fatal"][0] == f"2 bad line(s), first: {trained}"
    assert [(e["file"], e["line"]) for e in report["schema_errors"]] == [(str(data / "train.jsonl"), 3),
                                                                          (str(data / "test.jsonl"), 3)]


def test_a_good_file_is_accepted_alike(tmp_path):
    data = _bad_dataset(tmp_path / "data", b"")
    samples, stats = load_samples(data / "train.jsonl")
    assert stats.samples == len(read_split(data, "train")) == lint_dataset(data)["splits"]["train"]["samples"] == 4
    assert samples[0] == sample_of(_row(completion="Line 0."))


def test_text_that_is_not_prompt_plus_completion_is_a_lint_verdict(tmp_path):
    data = _bad_dataset(tmp_path / "data", json.dumps(_row(text="other")).encode())
    report = lint_dataset(data)
    assert not report["ok"] and "train.jsonl line 3: 'text' is not 'prompt' + 'completion'" in report["fatal"][0]
    assert "line 3: 'text' is not" in _one_line_error(lambda: read_rows(data / "train.jsonl", "prepared"))
    assert load_samples(data / "train.jsonl")[1].samples == len(read_split(data, "train")) == 5  # they read the ids


def test_missing_and_empty_files(tmp_path):
    message = _one_line_error(lambda: read_rows(tmp_path / "valid.jsonl"))
    assert message.startswith(f"{tmp_path / 'valid.jsonl'}: not found") and "lorakit data prepare --out" in message
    assert "dataset directory not found" in _one_line_error(lambda: read_split(tmp_path / "nope", "test"))
    (tmp_path / "train.jsonl").write_text("\n  \n")
    assert read_rows(tmp_path / "train.jsonl").rows == []  # callers that accept an empty split
    message = _one_line_error(lambda: read_rows(tmp_path / "train.jsonl", allow_empty=False))
    assert message.startswith(f"{tmp_path / 'train.jsonl'}: empty")


def test_what_each_caller_needs(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "hand-written, no tokens"}) + "\n")
    assert read_rows(tmp_path / "train.jsonl", "content").rows  # lint: usable, a schema gap
    assert "missing 'input_ids'" in _one_line_error(lambda: read_rows(tmp_path / "train.jsonl", "tokens"))
    assert "missing prompt, completion, input_ids, prompt_len, meta" in _one_line_error(
        lambda: read_rows(tmp_path / "train.jsonl", "prepared"))
    tokenized = load_samples(tmp_path / "train.jsonl", tokenizer=lambda text: {"input_ids": list(range(len(text)))})
    assert tokenized[0][0].ids == list(range(23))
    assert row_problems({"input_ids": [5, 6]}, "tokens") == []  # the trainer's minimal row
    assert row_problems({"input_ids": [5, 6]}, "content") == ["no 'text', 'prompt'/'completion' or 'messages' field"]
    assert set(REQUIRED) <= set(_row())


def test_nothing_is_half_written_when_a_write_fails(tmp_path, monkeypatch):
    path = write_rows(tmp_path / "train.jsonl", [_row()])
    before = path.read_bytes()
    with pytest.raises(LorakitError, match=r"train\.jsonl: row 2 would be unreadable .*nothing written"):
        write_rows(path, [_row(), _row(prompt_len=-1)])

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_rows(path, [_row("new", "rows")] * 100)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]  # no temp file left behind
