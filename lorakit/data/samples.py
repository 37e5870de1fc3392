"""Render passages and pairs into training samples (text / instruct / chat) and tokenize them.

``input_ids`` are the prompt's tokens followed by the completion's tokens, each tokenized on
its own: the prompt boundary is then exact (``prompt_len`` tokens decode to ``prompt``), and
``decode(input_ids) == text``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from lorakit.data.chunking import Passage, encode_batch
from lorakit.data.documents import Pair
from lorakit.data.templates import TEMPLATES, plan
from lorakit.errors import LorakitError

FORMATS = ("text", "instruct", "chat")
SAMPLE_META_KEYS = ("book", "author", "title", "translator", "gutenberg_id", "task", "source")


@dataclass
class Draft:
    """A sample before rendering: an instruction (or prior chat turns) and the completion."""

    instruction: str
    completion: list[str]  # paragraphs
    meta: dict
    prior: list[dict] | None = None  # chat turns before the answer (JSONL chat records)
    passage: bool = True  # cut from a document (may be trimmed), not a ready-made pair


def render(draft: Draft, fmt: str, tokenizer: Any) -> tuple[str, str, list[dict] | None]:
    """(prompt, completion, messages) strings of a draft in format `fmt`; prompt + completion = text."""
    body = "\n\n".join(draft.completion)
    # ready-made pairs keep the user's exact strings; our own prompts get a blank line before the answer
    prompt = f"{draft.instruction.strip()}\n\n" if draft.passage and draft.instruction else draft.instruction
    if fmt == "text":
        return "", prompt + body, None
    if fmt == "instruct":
        return prompt, body + (getattr(tokenizer, "eos_token", None) or ""), None
    prior = draft.prior or [{"role": "user", "content": draft.instruction}]
    messages = prior + [{"role": "assistant", "content": body}]
    if not getattr(tokenizer, "chat_template", None):
        raise LorakitError("this model's tokenizer has no chat template; use --format instruct instead of chat")
    prompt = tokenizer.apply_chat_template(prior, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise LorakitError("this model's chat template does not render the prompt as a prefix of the "
                           "conversation, so prompt tokens cannot be masked; use --format instruct")
    return prompt, full[len(prompt):], messages


def _encode(tokenizer: Any, fmt: str, prompts: list[str], completions: list[str]) -> list[tuple[list[int], int]]:
    # Specials: text and instruct samples start like a fresh document (BOS if the tokenizer adds one);
    # chat templates already spell out their special tokens.
    p_ids = encode_batch(tokenizer, prompts, special=fmt == "instruct") if fmt != "text" else [[] for _ in prompts]
    c_ids = encode_batch(tokenizer, completions, special=fmt == "text")
    return [(p + c, len(p)) for p, c in zip(p_ids, c_ids)]


def prompt_overhead(tokenizer: Any, fmt: str, meta: dict) -> int:
    """Most tokens any prompt template (and end-of-sample tokens) can add to a passage, plus a margin."""
    if fmt == "text":
        return len(encode_batch(tokenizer, ["x"], special=True)[0]) - 1
    fill = {"author": meta.get("author") or "the author", "title": meta.get("title") or "the book",
            "translated": f" (translated by {meta['translator']})" if meta.get("translator") else "",
            "name": "Stepan Arkadyevitch Oblonsky", "themes": "money and poverty and guilt and crime",
            "hint": " set in a drawing-room in the evening", "context": "x"}
    drafts = [Draft(t.format(**fill), ["x"], meta) for ts in TEMPLATES.values() for t in ts]
    rendered = [render(d, fmt, tokenizer) for d in drafts]
    sizes = _encode(tokenizer, fmt, [r[0] for r in rendered], [r[1] for r in rendered])
    return max(len(ids) for ids, _ in sizes) + 8


def plan_drafts(passages: Sequence[Passage], pairs: Sequence[Pair], fmt: str, seed: int) -> list[Draft]:
    """Drafts for every passage (a style task each, unless plain text) and every ready pair."""
    drafts: list[Draft] = []
    for p in passages:
        meta = dict(p.doc.meta)
        if fmt == "text":
            meta["task"] = "text"
            drafts.append(Draft("", p.paras, meta))
            continue
        rng = random.Random(f"{seed}|{meta['book']}|{p.doc.doc_id}|{p.index}")
        task, instruction, completion = plan(p.paras, meta, rng)
        meta["task"] = task
        drafts.append(Draft(instruction, completion, meta))
    for pair in pairs:
        prior = pair.messages[:-1] if pair.messages and fmt == "chat" else None
        drafts.append(Draft(pair.prompt, [pair.completion], dict(pair.meta), prior, passage=False))
    return drafts


def build_samples(drafts: Sequence[Draft], tokenizer: Any, *, fmt: str, seq_len: int, min_tokens: int,
                  counts: Counter) -> list[dict]:
    """Render and tokenize drafts; over-long passages lose trailing paragraphs, the rest is dropped.

    `counts` gets 'too_long', 'too_short' and 'trimmed' sample counts.
    """
    if fmt not in FORMATS:
        raise LorakitError(f"unknown --format '{fmt}'; use one of: {', '.join(FORMATS)}")
    done: list[dict | None] = [None] * len(drafts)
    pending = list(enumerate(drafts))
    while pending:
        rendered = [render(d, fmt, tokenizer) for _, d in pending]
        encoded = _encode(tokenizer, fmt, [r[0] for r in rendered], [r[1] for r in rendered])
        retry: list[tuple[int, Draft]] = []
        for (i, draft), (prompt, completion, messages), (ids, prompt_len) in zip(pending, rendered, encoded):
            if len(ids) > seq_len:
                if draft.passage and len(draft.completion) > 1:
                    counts["trimmed"] += 1
                    retry.append((i, Draft(draft.instruction, draft.completion[:-1], draft.meta, draft.prior)))
                else:
                    counts["too_long"] += 1
                continue
            if draft.passage and len(ids) - prompt_len < min_tokens:
                counts["too_short"] += 1
                continue
            meta = {k: draft.meta.get(k) for k in SAMPLE_META_KEYS}
            sample = {"text": prompt + completion, "prompt": prompt, "completion": completion,
                      "input_ids": ids, "prompt_len": prompt_len, "meta": meta}
            if messages is not None:
                sample["messages"] = messages
            done[i] = sample
        pending = retry
    return [s for s in done if s is not None]
