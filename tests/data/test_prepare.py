"""End to end on synthetic books: outputs, report, splits, atomic writes, CLI exit codes."""

from __future__ import annotations

import json

import pytest

from lorakit.cli import main
from lorakit.data.schema import read_rows
from lorakit.data.prepare import prepare_dataset
from lorakit.errors import LorakitError


def _library_dataset(library, tmp_path, tokenizer, **kw):
    out = tmp_path / "ds"
    report = prepare_dataset([library], out, tokenizer, fmt=kw.pop("fmt", "instruct"), seq_len=256,
                             val_fraction=0.2, test_fraction=0.2, **kw)
    return out, report


def test_prepare_writes_splits_and_a_report(library, tmp_path, tokenizer):
    (library / "extra.jsonl").write_text(
        json.dumps({"prompt": "Write one line.\n", "completion": "The road was long and the snow was deep."}) +
        "\nthis line is not json\n", encoding="utf-8")
    out, report = _library_dataset(library, tmp_path, tokenizer, skip_bad=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
    assert json.loads((out / "report.json").read_text())["splits"] == report["splits"]
    # the near-duplicate is dropped and the report says which file it duplicates
    (dup,) = report["duplicates"]["documents"]
    assert dup["file"].endswith("dup_book1.txt") and dup["duplicate_of"].endswith("book1.txt")
    assert report["inputs"]["bad"][0]["line"] == 2 and report["inputs"]["bad"][0]["reason"] == "bad_json"
    removed = report["cleaning"]["removed"]
    assert removed["illustrations"] == 4 and removed["transcriber_notes"] == 4 and removed["toc_lines"] > 0
    splits = {name: read_rows(out / f"{name}.jsonl", "prepared").rows for name in ("train", "valid", "test")}
    assert all(splits.values())
    books = {name: {s["meta"]["book"] for s in samples} for name, samples in splits.items()}
    assert not (books["train"] & books["test"]) and not (books["train"] & books["valid"])
    assert not (books["valid"] & books["test"])
    assert report["leakage"]["pairs_found"] == 0 and report["lint"]["leakage"]["pairs"] == 0
    assert all(len(s["input_ids"]) <= 256 for v in splits.values() for s in v)
    assert report["lint"]["ok"] and set(report["lint"]["authors"]) == {"Ivan Petrovsky", "Marya Volkova",
                                                                     "Pavel Orlov", "unknown"}


def test_bad_input_stops_with_nothing_written(library, tmp_path, tokenizer):
    (library / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    out = tmp_path / "ds"
    with pytest.raises(LorakitError, match=r"broken\.jsonl:2: not valid JSON"):
        prepare_dataset([library], out, tokenizer, seq_len=256)
    assert list(tmp_path.iterdir()) == [library]  # no dataset, no temporary folder left behind


def test_existing_output_needs_overwrite(library, tmp_path, tokenizer):
    out, first = _library_dataset(library, tmp_path, tokenizer, fmt="text")
    with pytest.raises(LorakitError, match="--overwrite"):
        _library_dataset(library, tmp_path, tokenizer, fmt="text")
    _, second = _library_dataset(library, tmp_path, tokenizer, fmt="chat", overwrite=True)
    assert json.loads((out / "report.json").read_text())["options"]["format"] == "chat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books", "ds"]


def test_everything_filtered_is_fatal(tmp_path, tokenizer):
    src = tmp_path / "french.txt"
    src.write_text("\n\n".join(["Je ne sais pas pourquoi il est parti si vite, mais elle est restée avec nous."] * 3))
    with pytest.raises(LorakitError, match="all input was filtered out.*non_english"):
        prepare_dataset([src], tmp_path / "ds", tokenizer, seq_len=256)
    assert not (tmp_path / "ds").exists()


def test_latin1_and_single_book_are_reported(make, tmp_path, tokenizer):
    text = make.gutenberg_text("Caf\u00e9 Days", "Anton Chekhov", 12, make.chapters(8, 4, 6))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cafe.txt").write_bytes(text.encode("latin-1"))
    report = prepare_dataset([tmp_path / "in"], tmp_path / "ds", tokenizer, seq_len=256)
    assert report["inputs"]["encoding_fallbacks"][0]["file"].endswith("cafe.txt")
    assert report["split_info"]["mode"] == "sample"  # one book cannot fill three splits
    assert any("split by sample" in w for w in report["warnings"])
    assert any("Latin-1" in w for w in report["warnings"])


def test_cli_prepare_and_lint(library, tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(["data", "prepare", "--input", str(library), "--out", str(out), "--format", "text",
                 "--seq-len", "256", "--val-fraction", "0.2", "--test-fraction", "0.2"])
    printed = capsys.readouterr().out
    assert code == 0 and "duplicate dropped: dup_book1.txt duplicates book1.txt" in printed
    assert "train:" in printed and "leakage: 0" in printed
    assert main(["data", "lint", str(out)]) == 0
    assert "ok" in capsys.readouterr().out.splitlines()[-1]


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    code = main(["data", "prepare", "--input", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "bin.txt" in err and "binary" in err
    assert not (tmp_path / "ds").exists()


def test_jsonl_text_and_chat_records_become_chat_samples(make, tmp_path, tokenizer):
    rows = [{"text": make.wrap(make.prose(seed, 6)), "meta": {"book": f"notes{seed}", "author": "Nina Pens"}}
            for seed in (31, 32, 33)]
    rows.append({"messages": [{"role": "system", "content": "You write short replies."},
                              {"role": "user", "content": "Describe the river."},
                              {"role": "assistant", "content": "The river was grey and slow under the bridge."}],
                 "book": "chats"})
    src = tmp_path / "mine.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    report = prepare_dataset([src], out, tokenizer, fmt="chat", seq_len=256, val_fraction=0.25, test_fraction=0.25)
    samples = [s for name in ("train", "valid", "test") for s in read_rows(out / f"{name}.jsonl", "prepared").rows]
    (chat,) = [s for s in samples if s["meta"]["book"] == "chats"]
    assert chat["messages"][0]["role"] == "system" and chat["meta"]["task"] == "custom"
    assert chat["text"] == tokenizer.apply_chat_template(chat["messages"], tokenize=False)
    assert {s["meta"]["book"] for s in samples} == {"notes31", "notes32", "notes33", "chats"}
    assert report["splits"]["test"]["samples"] and report["splits"]["valid"]["samples"]


def test_output_folder_inside_the_input_is_not_read_back(library, tmp_path, tokenizer):
    out = library / "dataset"
    kwargs = dict(fmt="text", seq_len=256, val_fraction=0.2, test_fraction=0.2)
    first = prepare_dataset([library], out, tokenizer, **kwargs)
    second = prepare_dataset([library], out, tokenizer, overwrite=True, **kwargs)
    assert len(second["inputs"]["files"]) == len(first["inputs"]["files"]) == 5
    assert second["splits"] == first["splits"]
