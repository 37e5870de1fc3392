"""Replay: the base model's own answers to everyday requests, mixed into a style dataset.

A LoRA adapter trained only on book text pulls the whole model toward that text, so the chat
answers it used to give become unlikely: the demo adapter raised the NLL of the base's own
answers to everyday requests well past issue 5's drift target (lorakit eval's drift; figures in
bench/RESULTS_eval.md). Mixing a small share of those
answers into training (self-distillation replay, cf. "Self-Distillation Bridges Distribution
Gap in Language Model Fine-Tuning", Yang et al., ACL 2024) lets the adapter learn the style
where the text is prose and keep the base's behaviour where it is a chat turn.

The prompts (`replay_prompts.txt`) are disjoint from `lorakit.eval.drift.EVERYDAY_PROMPTS`, the
ones drift is measured on. Rows are completion-only samples (train with --mask-prompt).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from torch import nn

from lorakit.atomic import atomic_write
from lorakit.data.schema import SPLIT_FILES, read_rows, write_rows
from lorakit.errors import LorakitError

PROMPTS_FILE = Path(__file__).with_name("replay_prompts.txt")
REPLAY_TASK = "replay"


def load_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """Prompts, one per line ('#' lines and blank lines skipped); the packaged set by default."""
    path = Path(path) if path else PROMPTS_FILE
    if not path.is_file():
        raise LorakitError(f"{path}: no such prompts file; pass a text file with one request per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise LorakitError(f"{path}: no prompts in it; write one request per line")
    return prompts


def replay_rows(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int = 64) -> list[dict]:
    """One dataset row per prompt: the chat-formatted request and the base's greedy answer.

    Rows follow `lorakit data`'s schema (input_ids = prompt + answer, prompt_len = prompt tokens);
    an answer that ended before `max_new_tokens` ends with the end-of-turn token, as the base's did.
    """
    from lorakit.infer.batch import BASE, Job, generate_all, sampling
    from lorakit.infer.prompts import encode_request

    encoded = [encode_request(tokenizer, p) for p in prompts]
    answers = generate_all(model, tokenizer, [Job(ids, BASE, sampling(max_new_tokens, 0.0, 0)) for ids in encoded])
    rows = []
    for prompt, ids, answer in zip(prompts, encoded, answers):
        answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
        if len(answer_ids) < max_new_tokens and tokenizer.eos_token_id is not None:
            answer_ids = answer_ids + [tokenizer.eos_token_id]
        prompt_text = tokenizer.decode(ids)
        rows.append({"text": prompt_text + answer, "prompt": prompt_text, "completion": answer, "input_ids": ids + answer_ids,
                     "prompt_len": len(ids), "meta": {"task": REPLAY_TASK, "request": prompt}})
    return rows


def add_replay(data_dir: str | os.PathLike, rows: list[dict], share: float = 0.1) -> dict:
    """Append `rows` to DATA_DIR/train.jsonl, repeated so they make ~`share` of its tokens.

    Replaces any replay rows from an earlier call; writes atomically and records what it did in
    DATA_DIR/replay.json. Returns that record.
    """
    if not 0 < share < 1:
        raise LorakitError(f"--share {share}: use a fraction between 0 and 1, e.g. 0.1")
    if not rows:
        raise LorakitError("no replay rows to add")
    data_dir = Path(data_dir)
    train = data_dir / SPLIT_FILES["train"]
    # an earlier call's rows are replaced
    kept = [row for row in read_rows(train, "tokens").rows if (row.get("meta") or {}).get("task") != REPLAY_TASK]
    train_tokens = sum(len(row["input_ids"]) for row in kept)
    replay_tokens = sum(len(r["input_ids"]) for r in rows)
    repeats = max(1, math.ceil(share / (1 - share) * train_tokens / replay_tokens))
    write_rows(train, kept + rows * repeats)
    record = {"prompts": len(rows), "repeats": repeats, "share": share, "train_tokens": train_tokens,
              "replay_tokens": replay_tokens * repeats,
              "actual_share": round(replay_tokens * repeats / (train_tokens + replay_tokens * repeats), 4)}
    atomic_write(data_dir / "replay.json", json.dumps(record, indent=1) + "\n")
    return record
