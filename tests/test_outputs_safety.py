"""Nothing lost, nothing overwritten by surprise: outputs never overlap inputs or a model cache,
--overwrite/--force replace only what lorakit wrote, a second train into a run refuses, killed
writers leave nothing behind, and bad numbers stop at parse time."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorakit.atomic import atomic_dir, atomic_write
from lorakit.cli import main
from tests.data.conftest import book_chapters, gutenberg_text
from tests.train.conftest import tiny_model_dir, write_dataset  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
PREP = ["--seq-len", "256", "--val-fraction", "0.25", "--test-fraction", "0.25"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included) -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _books(folder: Path) -> Path:
    folder.mkdir()
    for seed in (1, 2, 3, 4):
        text = gutenberg_text(f"Book {seed}", f"Author {seed}", 100 + seed, book_chapters(seed))
        (folder / f"book{seed}.txt").write_text(text, encoding="utf-8")
    (folder / "notes.md").write_text("my own notes, not a book\n")
    return folder


def _refused(capsys, argv: list[str], *names: str) -> str:
    """`lorakit ARGV` exits 2 with one line on stderr that names each of `names`."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    for name in names:
        assert name in err, (name, err)
    return err


def _adapter(base: Path, out: Path) -> Path:
    from lorakit.adapters import LoraConfig, add_adapter, save_adapter
    from lorakit.models import load_model

    model, _ = load_model(base, with_tokenizer=False)
    add_adapter(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj"]))
    save_adapter(model, out, base_model_name_or_path=str(base))
    return out


@pytest.fixture
def base_and_adapter(tiny_model_dir, tmp_path):  # noqa: F811
    """A private copy of the tiny base (a failing test must not damage the shared one) and an adapter."""
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    return base, _adapter(base, tmp_path / "adapter")


# --- defect 1: data prepare --------------------------------------------------------------------

def test_prepare_never_writes_over_its_input(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    books = _books(tmp_path / "books")
    before = _tree(books)
    inputs = [str(p) for p in sorted(books.glob("*.txt"))]
    _refused(capsys, ["data", "prepare", "--model", str(tiny_model_dir), "--input", *inputs, "--out", str(books),
                      "--overwrite", *PREP], f"--out {books}", "contains", inputs[0])
    _refused(capsys, ["data", "prepare", "--model", str(tiny_model_dir), "--input", str(books), "--out", str(books),
                      "--overwrite", *PREP], f"--out {books}")
    assert _tree(books) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books"]


def test_prepare_overwrite_replaces_a_dataset_and_nothing_else(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    books = _books(tmp_path / "books")
    out = tmp_path / "ds"
    argv = ["data", "prepare", "--model", str(tiny_model_dir), "--input", str(books), "--out", str(out), *PREP]
    assert main(argv) == 0
    (out / "mine.txt").write_text("keep me")
    before = _tree(out)
    _refused(capsys, [*argv, "--overwrite"], "mine.txt", "new folder")
    assert _tree(out) == before
    (out / "mine.txt").unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "test.jsonl", "train.jsonl", "valid.jsonl"]


# --- defect 2: merge ---------------------------------------------------------------------------

def test_merge_never_writes_over_or_into_its_base_or_adapter(base_and_adapter, capsys):
    base, adapter = base_and_adapter
    before = {"base": _tree(base), "adapter": _tree(adapter)}
    for out in (base, base / "merged", adapter, adapter / "merged", base.parent):
        _refused(capsys, ["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out), "--force"],
                 f"--out {out}")
    assert {"base": _tree(base), "adapter": _tree(adapter)} == before


def test_merge_into_the_model_cache_is_refused(base_and_adapter, tmp_path, monkeypatch, capsys):
    base, adapter = base_and_adapter
    home = tmp_path / "home"
    (home / "models" / "cached-model").mkdir(parents=True)
    monkeypatch.setenv("LORAKIT_HOME", str(home))
    for out in (home / "models" / "cached-model", home / "models" / "new", home):
        _refused(capsys, ["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out), "--force"],
                 f"--out {out}", "LORAKIT_HOME")
    assert [str(p.relative_to(home)) for p in sorted(home.rglob("*"))] == ["models", "models/cached-model"]


def test_merge_force_replaces_only_a_model_lorakit_merged(base_and_adapter, tmp_path, capsys):
    base, adapter = base_and_adapter
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep me")
    _refused(capsys, ["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(mine), "--force"],
             "keep.txt")
    assert _tree(mine) == {"keep.txt": hashlib.sha256(b"keep me").hexdigest()}
    merged = tmp_path / "merged"
    argv = ["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(merged)]
    assert main(argv) == 0
    _refused(capsys, argv, "--force")
    assert main([*argv, "--force", "--dtype", "bfloat16"]) == 0
    assert '"bfloat16"' in (merged / "config.json").read_text()


# --- defect 3: train ---------------------------------------------------------------------------

def _train_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "4", "--rank", "2",
            "--threads", "1", "--no-progress", *extra]


def test_a_second_train_into_a_run_refuses_and_keeps_it(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    data = write_dataset(tmp_path / "data", n_train=16, n_valid=4)
    out = tmp_path / "run"
    assert main(_train_argv(tiny_model_dir, data, out, "--max-steps", "4", "--save-every", "2")) == 0
    capsys.readouterr()
    before = _tree(out)
    _refused(capsys, _train_argv(tiny_model_dir, data, out, "--max-steps", "1"), f"--out {out}", "--resume auto",
             "new --out")
    assert _tree(out) == before  # latest.json still names a checkpoint that exists
    assert main(_train_argv(tiny_model_dir, data, out, "--max-steps", "6", "--save-every", "2", "--resume")) == 0


def test_train_out_must_not_overlap_data_model_or_cache(tiny_model_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    data = write_dataset(tmp_path / "data", n_train=8, n_valid=2)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = {"data": _tree(data), "model": _tree(model)}
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    for out, name in ((data, "--data"), (data / "run", "--data"), (tmp_path, "--data"), (model / "run", "--model"),
                      (tmp_path / "home" / "run", "LORAKIT_HOME")):
        _refused(capsys, _train_argv(model, data, out, "--max-steps", "1"), f"--out {out}", name)
    assert {"data": _tree(data), "model": _tree(model)} == before
    assert not (tmp_path / "home").exists()


# --- defect 4: temp files and directories -------------------------------------------------------

def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_inside_atomic_dir_leaves_the_old_output_and_no_temp(tmp_path, error):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(error):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("new")
            raise error()
    assert (out / "a.txt").read_text() == "old" and _hidden(tmp_path) == []


def _killed(code: str, tmp_path: Path) -> None:
    """Run `code` in a child process that kills itself with SIGKILL (no cleanup can run)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr


KILL = "import os, signal\nfrom pathlib import Path\nfrom lorakit.atomic import atomic_dir, atomic_write\n"


def test_temp_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    _killed(KILL + "with atomic_dir(Path('out')) as tmp:\n    (tmp / 'a.txt').write_text('half')\n"
                   "    os.kill(os.getpid(), signal.SIGKILL)\n", tmp_path)
    _killed(KILL + "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"  # mid-write of the temp file
                   "atomic_write(Path('file.txt'), 'half')\n", tmp_path)
    assert len(_hidden(tmp_path)) == 2  # the kills left one temp directory and one temp file
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("whole")
    atomic_write(tmp_path / "file.txt", "whole")
    assert _hidden(tmp_path) == [] and (tmp_path / "out" / "a.txt").read_text() == "whole"


def test_a_kill_between_the_swap_renames_loses_nothing(tmp_path):
    """Killed after the old output was moved aside and before the new one moved in: the next write
    puts the old one back first, so even when that write fails the old output is there."""
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("old")
    _killed(KILL + "real, calls = os.replace, []\n"
                   "def replace(a, b):\n    calls.append(a)\n    if len(calls) == 2:\n"
                   "        os.kill(os.getpid(), signal.SIGKILL)\n    real(a, b)\n"
                   "os.replace = replace\n"
                   "with atomic_dir(Path('out')) as tmp:\n    (tmp / 'a.txt').write_text('new')\n", tmp_path)
    assert not (tmp_path / "out").exists()  # the state the kill left
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out"):
            raise RuntimeError("this write fails too")
    assert (tmp_path / "out" / "a.txt").read_text() == "old" and _hidden(tmp_path) == []


# --- defect 5: numbers stop at parse time --------------------------------------------------------

BAD_NUMBERS = [
    (["data", "prepare", "--input", "x", "--out", "y"], "--seq-len", "0"),
    (["data", "prepare", "--input", "x", "--out", "y"], "--val-fraction", "nan"),
    (["data", "prepare", "--input", "x", "--out", "y"], "--test-fraction", "1.5"),
    (["data", "prepare", "--input", "x", "--out", "y"], "--min-tokens", "-1"),
    (["eval", "--data", "x"], "--temperature", "nan"),
    (["eval", "--data", "x"], "--threads", "0"),
    (["eval", "--data", "x"], "--max-new-tokens", "-3"),
    (["compare", "--data", "x"], "--budget-minutes", "inf"),
    (["compare", "--data", "x"], "--batch-size", "0"),
    (["plan"], "--batch-size", "0"),
    (["plan"], "--dropout", "1.5"),
    (["plan"], "--rank", "2.5"),
]


@pytest.mark.parametrize("argv,flag,value", BAD_NUMBERS)
def test_bad_numbers_stop_at_parse_time_in_one_line(tmp_path, capsys, argv, flag, value):
    missing = str(tmp_path / "no-such-model")  # a check after parsing would fail on the model first
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--model", missing, flag, value])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0 and flag in err and value in err, err


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.integers(-5, 5).map(str)))
def test_number_types_accept_only_what_they_promise(text):
    import argparse
    import math

    from lorakit.data.cli import fraction, nonneg_float, open_fraction, positive_float, positive_int

    rules = {positive_int: lambda v: isinstance(v, int) and v > 0, fraction: lambda v: 0 <= v < 1,
             open_fraction: lambda v: 0 < v < 1, positive_float: lambda v: v > 0, nonneg_float: lambda v: v >= 0}
    for parse, ok in rules.items():
        try:
            value = parse(text)
        except argparse.ArgumentTypeError:
            continue
        assert math.isfinite(value) and ok(value), (parse.__name__, text, value)
