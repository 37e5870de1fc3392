"""Chunking and sample rendering with the real tokenizer: properties every sample must have."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lorakit.data.chunking import chunk_documents, pack
from lorakit.data.documents import Document, Pair
from lorakit.data.samples import build_samples, plan_drafts, prompt_overhead
from lorakit.data.structure import Para
from lorakit.data.templates import TEMPLATES, main_character, plan, themes_of

META = {"book": "quiet_house", "author": "Ivan Petrovsky", "title": "The Quiet House", "translator": "A. Translator",
        "gutenberg_id": 101, "source": "quiet_house.txt"}


def _doc(make, seed=1, long_para=False) -> Document:
    paras = [Para(p, section) for section, ch in enumerate(make.chapters(seed, 3, 6)) for p in ch]
    if long_para:  # one paragraph longer than any window: must be cut at sentence ends
        paras.insert(3, Para(" ".join(make.prose(seed + 50, 6, sentences=8)), 0))
    return Document("quiet_house", "quiet_house.txt", dict(META), paras, "gutenberg")


def _samples(tokenizer, docs, fmt, seq_len=256, pairs=(), seed=0):
    budget = {d.doc_id: seq_len - prompt_overhead(tokenizer, fmt, d.meta) for d in docs}
    passages = chunk_documents(docs, tokenizer, budget)
    counts: Counter = Counter()
    samples = build_samples(plan_drafts(passages, list(pairs), fmt, seed), tokenizer, fmt=fmt, seq_len=seq_len,
                            min_tokens=16, counts=counts)
    return samples, counts, passages


@pytest.mark.parametrize("fmt", ["text", "instruct", "chat"])
def test_every_sample_fits_and_its_prompt_tokens_decode_to_the_prompt(tokenizer, make, fmt):
    doc = _doc(make, long_para=True)
    samples, counts, _ = _samples(tokenizer, [doc], fmt)
    assert samples and counts["too_long"] == 0
    source = doc.text
    for s in samples:
        assert len(s["input_ids"]) <= 256
        assert s["text"] == s["prompt"] + s["completion"]
        assert tokenizer.decode(s["input_ids"]) == s["text"]
        assert tokenizer.decode(s["input_ids"][: s["prompt_len"]]) == s["prompt"]
        assert set(s["meta"]) == {"book", "author", "title", "translator", "gutenberg_id", "task", "source"}
        passage = s["messages"][-1]["content"] if fmt == "chat" else s["completion"].replace(tokenizer.eos_token, "")
        assert passage.strip() in source  # the completion is a real passage of the book
    if fmt == "text":
        assert all(s["prompt_len"] == 0 and s["meta"]["task"] == "text" for s in samples)
    else:
        assert all(s["prompt_len"] > 0 for s in samples)
        assert {s["meta"]["task"] for s in samples} <= set(TEMPLATES)


def test_chat_samples_use_the_tokenizer_template(tokenizer, make):
    samples, _, _ = _samples(tokenizer, [_doc(make)], "chat")
    for s in samples[:5]:
        assert s["text"] == tokenizer.apply_chat_template(s["messages"], tokenize=False)
        assert [m["role"] for m in s["messages"]] == ["user", "assistant"]


def test_passages_follow_paragraphs_and_chapters(tokenizer, make):
    doc = _doc(make)
    _, _, passages = _samples(tokenizer, [doc], "text")
    paragraphs = [p.text for p in doc.paras]
    section_of = {p.text: p.section for p in doc.paras}
    assert [para for p in passages for para in p.paras] == paragraphs  # nothing lost, nothing reordered
    for p in passages:
        assert len({section_of[para] for para in p.paras}) == 1  # no passage straddles a chapter break


def test_pack_balances_windows():
    units = [(str(i), 40) for i in range(10)]  # 400 tokens + separators into windows of 300
    windows = pack(units, budget=300, sep=2)
    assert len(windows) == 2 and all(n <= 300 for _, n in windows)
    assert abs(windows[0][1] - windows[1][1]) <= 42


def test_ready_pairs_keep_their_text_and_masks(tokenizer):
    pair = Pair("Translate: bonjour\n", "hello", {**META, "task": "custom"}, "p.jsonl", 1)
    samples, _, _ = _samples(tokenizer, [], "instruct", pairs=[pair])
    (s,) = samples
    assert s["prompt"] == "Translate: bonjour\n" and s["completion"] == "hello" + tokenizer.eos_token
    assert s["meta"]["task"] == "custom"


def test_prompts_are_deterministic_and_varied(tokenizer, make):
    docs = [_doc(make, seed) for seed in (1, 2, 3)]
    for i, d in enumerate(docs):
        d.doc_id = d.meta["book"] = f"book{i}"
    a, _, _ = _samples(tokenizer, docs, "instruct", seed=3)
    b, _, _ = _samples(tokenizer, docs, "instruct", seed=3)
    assert [s["text"] for s in a] == [s["text"] for s in b]
    first_lines = Counter(s["prompt"].split("\n")[0] for s in a)
    assert len(first_lines) >= 5 and max(first_lines.values()) / len(a) < 0.5


def test_prompt_features_come_from_the_passage():
    text = ("It was evening when Varvara Petrovna came into the garden. The old gardener bowed to Varvara Petrovna, "
            "and she asked him about the money and the debts of her poor brother, who owed a hundred roubles.")
    assert main_character(text) == "Varvara Petrovna"
    assert themes_of(text)[0] == "money and poverty"
    task, instruction, completion = plan([text], META, random.Random(0))
    assert task in TEMPLATES and completion == [text] and "Ivan Petrovsky" in instruction
