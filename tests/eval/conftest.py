"""A tiny llama with SmolLM2's tokenizer and a small prepared dataset (the `lorakit data` schema)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.train.conftest import tiny_model_dir  # noqa: F401  (session fixture reused)

WORDS = ("the old man walked slowly along the river and thought of his daughter who had gone to the city "
         "she wrote to him rarely and he read each letter twice by the window while the snow fell").split()
BOOKS = {
    "train": [("Book One", "Anna Author"), ("Book Two", "Boris Author")],
    "valid": [("Book Three", "Anna Author")],
    "test": [("Book Four", "Anna Author"), ("Book Five", "Boris Author")],
}
TASKS = ("theme", "character", "scene", "continue")


def passage(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 18))]
        text = " ".join(words).capitalize()
        out.append(f"\"{text}!\"" if rng.random() < 0.3 else text + rng.choice([".", ".", "?", ", he said."]))
    return " ".join(out)


def write_prepared(root: Path, tokenizer, per_book: int = 6, seed: int = 0) -> Path:
    """train/valid/test JSONL in the instruct format: prompt ids + completion ids, exact boundary."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, books in BOOKS.items():
        with (root / f"{split}.jsonl").open("w") as fh:
            for title, author in books:
                for i in range(per_book):
                    task = TASKS[i % len(TASKS)]
                    prompt = f"Write a {task} passage in the style of {author}.\n\n"
                    completion = passage(rng, rng.randint(2, 5)) + tokenizer.eos_token
                    p_ids = tokenizer(prompt).input_ids
                    c_ids = tokenizer(completion, add_special_tokens=False).input_ids
                    meta = {"book": title.lower().replace(" ", "_"), "author": author, "title": title,
                            "translator": None, "gutenberg_id": None, "task": task, "source": "synthetic"}
                    fh.write(json.dumps({"text": prompt + completion, "prompt": prompt, "completion": completion,
                                         "input_ids": p_ids + c_ids, "prompt_len": len(p_ids), "meta": meta}) + "\n")
    return root


@pytest.fixture(scope="session")
def tokenizer():
    from lorakit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, tokenizer) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"), tokenizer)
