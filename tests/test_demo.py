"""`lorakit demo` end to end on a tiny model and a small synthetic library: every stage runs."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM

from lorakit.demo import run_demo
from lorakit.errors import LorakitError
from tests.data.conftest import book_chapters, gutenberg_text
from tests.train.conftest import tiny_model_dir  # noqa: F401  (fixture)


def _library(folder):
    folder.mkdir()
    specs = [("The Quiet House", "Ivan Petrovsky", 101, 1), ("Winter Roads", "Ivan Petrovsky", 102, 2),
             ("The Letter", "Marya Volkova", 103, 3), ("A Small Garden", "Pavel Orlov", 104, 4),
             ("Evening Bells", "Marya Volkova", 105, 5)]
    for title, author, ebook_id, seed in specs:
        text = gutenberg_text(title, author, ebook_id, book_chapters(seed, n_chapters=4, paras=10))
        (folder / f"book{seed}.txt").write_text(text, encoding="utf-8")
    return folder


def test_demo_runs_every_stage(tiny_model_dir, tmp_path):  # noqa: F811
    books = _library(tmp_path / "books")
    summary = run_demo(str(books), tmp_path / "demo", minutes=0.01, seq_len=96, rank=4,
                       model=str(tiny_model_dir), eval_tokens=300)
    out = tmp_path / "demo"
    assert (out / "data" / "train.jsonl").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "report" / "report.html").is_file()
    replay = json.loads((out / "data" / "replay.json").read_text())  # the base's answers mixed in
    assert replay["prompts"] >= 32 and replay["actual_share"] >= 0.03
    merged = AutoModelForCausalLM.from_pretrained(summary["merged"])  # plain transformers, no lorakit
    assert merged.config.model_type == "llama"
    assert json.loads((out / "demo.json").read_text())["steps"] >= 10
    assert any(key.startswith("held-out perplexity") for key in summary["headline"])


def test_missing_corpus_is_one_clear_line(tmp_path):
    import pytest

    with pytest.raises(LorakitError, match="pass a folder of .txt books with --corpus"):
        run_demo(str(tmp_path / "nowhere"), tmp_path / "demo")


def test_the_step_budget_ignores_the_warm_up_step_and_one_slow_step():
    from lorakit.demo import steps_for_budget

    # warm-up 9 s dropped; one step slowed to 8 s by other work does not set the pace: median 1.2 s
    assert steps_for_budget([9.0, 1.0, 1.2, 8.0, 1.1], minutes=1.0) == 50
    assert steps_for_budget([5.0, 5.0], minutes=0.1) == 10  # never fewer than 10 steps
