"""Fuzzing the input readers (.txt, .jsonl, .gz) and the prepared-split reader with hypothesis.

Property: any bytes in any supported file give records, or one line naming the file (and,
for a bad JSONL line, the line); `--skip-bad` never stops; nothing on disk changes.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorakit.data.documents import load_inputs
from lorakit.data.readers import BadInputError, parse_jsonl, read_source
from lorakit.data.schema import read_rows
from lorakit.errors import LorakitError
from tests.test_fuzz_inputs import FUZZ, check_refusal, hostile_json, json_values

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
PREFIXES = (b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b"\x1f\x8b")


@st.composite
def raw_files(draw) -> tuple[str, bytes]:
    """(suffix, file bytes): arbitrary bytes behind a BOM, gzip of them, or a truncated gzip."""
    suffix = draw(st.sampled_from(SUFFIXES))
    body = draw(st.sampled_from(PREFIXES)) + draw(st.binary(max_size=200) | json_lines().map(str.encode))
    if suffix.endswith(".gz"):
        packed = gzip.compress(body)
        body = draw(st.sampled_from([packed, packed[: max(1, len(packed) // 2)], body]))
    return suffix, body


def json_lines() -> st.SearchStrategy[str]:
    """A JSONL text of a few lines: objects with wrong-typed fields, non-objects, hostile texts."""
    line = (json_values().map(json.dumps) | st.dictionaries(st.sampled_from(("text", "prompt", "completion",
            "messages", "author", "title", "gutenberg_id", "meta", "task")), json_values(), max_size=4).map(json.dumps)
            | hostile_json | st.text(max_size=20))
    return st.lists(line, min_size=1, max_size=4).map("\n".join)


def _read_all(path: Path, skip_bad: bool = False):
    src = read_source(path)
    if src.kind == "jsonl":
        parse_jsonl(src, skip_bad=skip_bad, bad=[])
    return load_inputs([path], skip_bad=skip_bad)


@FUZZ
@given(raw_files())
def test_any_input_file_gives_records_or_one_line_naming_it(case):
    suffix, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"book{suffix}"
        path.write_bytes(data)
        check_refusal(lambda: _read_all(path), str(path), Path(tmp))
        loaded = check_refusal(lambda: load_inputs([path], skip_bad=True), str(path), Path(tmp))
        assert not isinstance(loaded, LorakitError), f"--skip-bad stopped: {loaded}"


@FUZZ
@given(json_lines())
def test_any_jsonl_line_gives_a_record_or_one_line_naming_file_and_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        path.write_text(text, encoding="utf-8")
        result = check_refusal(lambda: _read_all(path), str(path), Path(tmp))
        if isinstance(result, BadInputError) and result.line is not None:
            assert f"{path}:{result.line}: " in str(result), str(result)
        elif not isinstance(result, LorakitError):
            for doc in result.docs + result.pairs:  # metadata is what templates and reports print
                assert all(v is None or isinstance(v, str) for k, v in doc.meta.items() if k != "gutenberg_id")
                assert doc.meta["gutenberg_id"] is None or type(doc.meta["gutenberg_id"]) is int


@FUZZ
@given(st.lists(json_values().map(json.dumps) | hostile_json | st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
                min_size=1, max_size=4),
       st.sampled_from(("any", "content", "tokens", "text_or_tokens", "prepared")))
def test_any_split_line_is_a_row_or_one_line_naming_file_and_line(lines, need):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
        result = check_refusal(lambda: read_rows(path, need), str(path), Path(tmp))
        if isinstance(result, LorakitError):
            assert re.search(r"line \d+: ", str(result)), str(result)
        else:  # a row training accepts is one it can turn into a tensor of token ids
            for row in result.rows:
                assert all(0 <= i < 2**63 for i in row.get("input_ids", []))
        lenient = check_refusal(lambda: read_rows(path, need, lenient=True), str(path), Path(tmp))
        assert not isinstance(lenient, LorakitError), f"lenient read stopped: {lenient}"


@pytest.mark.parametrize("line", [
    "[" * 3_000 + "]" * 3_000,
    '{"text": "x", "n": ' + "9" * 4_400 + "}",
    '{"text": "a book", "author": 5}',
    '{"text": "a book", "meta": {"author": ["A", "B"]}}',
    '{"text": "a book", "gutenberg_id": Infinity}',
    '{"prompt": "p", "completion": "c", "title": {"a": 1}, "task": [1]}',
])
def test_the_found_defects_stay_fixed(tmp_path, line):
    path = tmp_path / "records.jsonl"
    path.write_text(line + "\n")
    result = check_refusal(lambda: _read_all(path), str(path), tmp_path)
    if isinstance(result, LorakitError):
        assert f"{path}:1: " in str(result)


@pytest.mark.parametrize("ids", [[-1, 5], [2**64, 5]])
def test_token_ids_no_tensor_can_hold_are_refused_with_the_line(tmp_path, ids):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"input_ids": ids, "prompt_len": 0}) + "\n")
    with pytest.raises(LorakitError, match=r"train.jsonl line 1: 'input_ids' must be a list of integers from 0"):
        read_rows(path)
