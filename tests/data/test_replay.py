"""Replay rows are the base's own greedy answers; add_replay mixes them in at the asked share."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.data.replay import REPLAY_TASK, add_replay, load_prompts, replay_rows
from lorakit.errors import LorakitError
from lorakit.eval.drift import EVERYDAY_PROMPTS
from lorakit.infer.prompts import encode_request
from lorakit.models import load_model
from tests.train.conftest import tiny_model_dir, write_dataset  # noqa: F401  (fixture)


def test_packaged_prompts_are_many_and_never_the_ones_drift_is_judged_by():
    prompts = load_prompts()
    assert len(prompts) >= 32 and len(set(prompts)) == len(prompts)
    assert not set(prompts) & set(EVERYDAY_PROMPTS)


def test_rows_hold_the_chat_prompt_and_the_base_greedy_answer(tiny_model_dir):  # noqa: F811
    model, tokenizer = load_model(tiny_model_dir)
    prompts = ["How do I boil water?", "Name a colour."]
    rows = replay_rows(model, tokenizer, prompts, max_new_tokens=6)
    for prompt, row in zip(prompts, rows):
        ids = encode_request(tokenizer, prompt)
        assert row["input_ids"][:row["prompt_len"]] == ids and row["meta"]["task"] == REPLAY_TASK
        with torch.no_grad():  # transformers' own greedy decoding, no lorakit engine
            out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)
        new = out[0, len(ids):].tolist()
        if tokenizer.eos_token_id in new:
            new = new[:new.index(tokenizer.eos_token_id)]
        assert row["completion"] == tokenizer.decode(new)


def _rows(n: int, length: int) -> list[dict]:
    return [{"input_ids": list(range(3, 3 + length)), "prompt_len": 2, "text": "x", "prompt": "p",
             "completion": "c", "meta": {"task": REPLAY_TASK}} for _ in range(n)]


def test_share_is_met_and_a_second_call_replaces_the_first(tmp_path):
    data = write_dataset(tmp_path / "data", n_train=200)
    original = (data / "train.jsonl").read_text().splitlines()
    tokens = sum(len(json.loads(line)["input_ids"]) for line in original)
    for share in (0.1, 0.25):
        record = add_replay(data, _rows(3, 10), share)
        lines = (data / "train.jsonl").read_text().splitlines()
        assert lines[:len(original)] == original  # the dataset's own rows, untouched and first
        replay = [json.loads(line) for line in lines[len(original):]]
        assert all(r["meta"]["task"] == REPLAY_TASK for r in replay) and len(replay) == 3 * record["repeats"]
        actual = 30 * record["repeats"] / (tokens + 30 * record["repeats"])
        assert share <= actual < share + 30 / tokens + 1e-9  # one more repeat would overshoot
        assert record["actual_share"] == round(actual, 4)
        assert json.loads((data / "replay.json").read_text()) == record


def test_bad_inputs_are_one_line_errors_and_change_nothing(tmp_path):
    data = write_dataset(tmp_path / "data")
    before = (data / "train.jsonl").read_bytes()
    with pytest.raises(LorakitError, match="between 0 and 1"):
        add_replay(data, _rows(1, 5), 1.5)
    with pytest.raises(LorakitError, match="train.jsonl: not found"):
        add_replay(tmp_path / "empty", _rows(1, 5), 0.1)
    (tmp_path / "prompts.txt").write_text("# only a comment\n\n")
    with pytest.raises(LorakitError, match="no prompts"):
        load_prompts(tmp_path / "prompts.txt")
    with pytest.raises(LorakitError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.txt")
    assert (data / "train.jsonl").read_bytes() == before
