"""Reading inputs: encodings, line endings, gzip, JSONL kinds, and clear errors for bad input."""

from __future__ import annotations

import gzip
import json

import pytest

from lorakit.data.readers import BadInputError, expand_inputs, parse_jsonl, read_source


def test_utf8_bom_and_crlf_are_normalised(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst line\r\nsecond line\r\n\r\nNext paragraph.\r\n")
    src = read_source(path)
    assert src.bom and src.encoding == "utf-8" and src.newlines == "crlf"
    assert src.text == "First line\nsecond line\n\nNext paragraph.\n"


def test_latin1_file_falls_back_and_says_so(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Le caf\xe9 \xe9tait ferm\xe9, said the old man.\n".encode("latin-1"))
    src = read_source(path)
    assert src.encoding in ("cp1252", "latin-1")
    assert "café était fermé" in src.text


def test_gzip_text_and_jsonl_are_read(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("A gzipped book.\n".encode()))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "A gzipped record."}\n'))
    files, ignored = expand_inputs([tmp_path])
    assert [f.name for f in files] == ["a.txt.gz", "b.jsonl.gz"] and not ignored
    assert read_source(files[0]).text == "A gzipped book.\n"
    src = read_source(files[1])
    assert src.kind == "jsonl" and src.compressed
    assert parse_jsonl(src)[0].text == "A gzipped record."


def test_folders_are_searched_recursively_and_other_types_ignored(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "x.txt").write_text("x")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "y.txt").write_text("y")
    files, ignored = expand_inputs([tmp_path])
    assert [f.name for f in files] == ["x.txt"]
    assert [f.name for f in ignored] == ["README.md"]


@pytest.mark.parametrize(
    ("name", "data", "reason", "words"),
    [
        ("image.txt", bytes(range(256)) * 4, "binary", ["image.txt", "binary", "--skip-bad"]),
        ("empty.txt", b"  \n\n", "empty", ["empty.txt", "empty"]),
        ("noise.txt", bytes([0x81, 0x8D, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06]) * 50, "bad_encoding",
         ["noise.txt", "UTF-8"]),
        ("broken.txt.gz", b"not gzip at all", "bad_gzip", ["broken.txt.gz", "gzip"]),
    ],
)
def test_bad_files_raise_one_clear_line(tmp_path, name, data, reason, words):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(BadInputError) as info:
        read_source(path)
    message = str(info.value)
    assert info.value.reason == reason and "\n" not in message
    for word in words:
        assert word in message


def test_unsupported_file_type_is_named(tmp_path):
    path = tmp_path / "notes.pdf"
    path.write_bytes(b"%PDF-1.4")
    with pytest.raises(BadInputError, match="notes.pdf.*unsupported file type"):
        expand_inputs([path])


def _jsonl(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_source(path)


def test_jsonl_record_kinds_and_metadata(tmp_path):
    src = _jsonl(tmp_path, [
        json.dumps({"text": "Plain text.", "author": "Someone"}),
        json.dumps({"prompt": "Q?", "completion": "A.", "meta": {"book": "b1"}}),
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}),
    ])
    recs = parse_jsonl(src)
    assert [r.kind for r in recs] == ["text", "pair", "chat"]
    assert recs[0].meta["author"] == "Someone" and recs[1].meta["book"] == "b1"
    assert recs[2].messages[-1]["content"] == "Hello."


def test_bad_json_line_names_file_and_line(tmp_path):
    src = _jsonl(tmp_path, ['{"text": "fine"}', '{"text": "fine too"}', '{"text": oops}'])
    with pytest.raises(BadInputError, match=r"data\.jsonl:3: not valid JSON.*--skip-bad"):
        parse_jsonl(src)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"title": "no text here"}', r"data\.jsonl:1: no 'text', 'prompt'/'completion' or 'messages'"),
        ('{"prompt": "only a prompt"}', r"data\.jsonl:1: has 'prompt' but no 'completion'"),
        ('{"text": 42}', r"data\.jsonl:1: field 'text' must be a string"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"data\.jsonl:1: 'messages' must be"),
        ('[1, 2]', r"data\.jsonl:1: each line must be a JSON object"),
    ],
)
def test_missing_or_wrong_fields_are_explained(tmp_path, line, pattern):
    with pytest.raises(BadInputError, match=pattern):
        parse_jsonl(_jsonl(tmp_path, [line]))


def test_skip_bad_counts_and_continues(tmp_path):
    src = _jsonl(tmp_path, ['{"text": "one"}', "not json", '{"nothing": 1}', '{"text": "two"}'])
    bad: list[dict] = []
    recs = parse_jsonl(src, skip_bad=True, bad=bad)
    assert [r.text for r in recs] == ["one", "two"]
    assert [(b["line"], b["reason"]) for b in bad] == [(2, "bad_json"), (3, "missing_field")]


def test_a_gzip_that_decompresses_past_the_limit_is_refused_before_it_fills_memory(tmp_path, monkeypatch):
    """A small .gz can hold gigabytes (a gzip bomb): decompression stops at the limit, in one line."""
    import gzip

    from lorakit.data import readers

    monkeypatch.setattr(readers, "MAX_SOURCE_BYTES", 1 << 20)
    bomb = tmp_path / "book.txt.gz"
    bomb.write_bytes(gzip.compress(b"word " * (1 << 20)))  # 5 MiB of text in a few KB
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(readers.BadInputError, match="more than 1 MiB") as info:
        readers.read_source(bomb)
    assert info.value.reason == "too_large" and "\n" not in str(info.value)
    plain = tmp_path / "big.txt"
    plain.write_bytes(b"word " * (1 << 19))  # 2.5 MiB, not compressed
    with pytest.raises(readers.BadInputError, match="split it"):
        readers.read_source(plain)
    small = tmp_path / "ok.txt.gz"
    small.write_bytes(gzip.compress(b"A short story.\n" * 100))
    assert readers.read_source(small).text.startswith("A short story.")
