"""`prepare_classify`: books or labelled JSONL to a classification dataset (``--task classify``).

The stages are `prepare_dataset`'s (read and clean, filter, deduplicate, chunk on paragraph
boundaries, leakage check, lint, atomic write) with labels added: every passage takes its
document's class (`lorakit.data.classify_labels`), the split is stratified by class and by book
(`lorakit.data.classify_split`), and the lint checks class coverage and balance
(`lorakit.data.classify_lint`).

Each row of train/valid/test.jsonl keeps the schema of `lorakit.data.schema` (text, prompt "",
completion = text, input_ids, prompt_len 0, meta) and adds ``task: "classify"`` and ``label`` (the
class name). input_ids are the passage's tokens without special tokens: the trainer adds the
model's own, and the passage leaves room in --seq-len for those the tokenizer adds itself.
report.json adds task, label_field, label_type, classes (sorted; a class's id is its index),
class_counts per split, balance and class_weights (``--balance weights``, else null).
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from lorakit.data.chunking import Passage, chunk_documents, encode_batch
from lorakit.data.classify_labels import Labels, label_documents
from lorakit.data.documents import Document
from lorakit.data.classify_lint import merge_class_lint
from lorakit.data.classify_split import class_counts, class_weights, downsample, split_classify
from lorakit.data.lint import lint_samples
from lorakit.data.prepare import (REPORT_VERSION, Laps, check_options, check_out, clean_inputs, cleaning_report,
                                  dedup_samples, input_warnings, read_inputs, write_dataset)
from lorakit.data.samples import SAMPLE_META_KEYS
from lorakit.data.splits import SPLITS, find_leakage, remove_leakage, sample_tokens
from lorakit.data.summary import format_prepare_summary
from lorakit.errors import LorakitError

BALANCE = ("none", "downsample", "weights")
TASK = "classify"


def check_classify_options(seq_len: int, min_tokens: int, val_fraction: float, test_fraction: float,
                           balance: str, split_by: str) -> None:
    """Refuse, in one line, options that cannot make a classification dataset."""
    check_options("text", seq_len, min_tokens, val_fraction, test_fraction)
    if balance not in BALANCE:
        raise LorakitError(f"unknown --balance '{balance}'; use one of: {', '.join(BALANCE)}")
    if split_by not in ("book", "sample"):
        raise LorakitError(f"--split-by must be 'book' or 'sample' (got '{split_by}')")


def added_special_tokens(tokenizer: Any) -> int:
    """How many tokens the tokenizer itself adds around a text (a BOS, say): room kept in --seq-len."""
    plain, special = encode_batch(tokenizer, ["x"]), encode_batch(tokenizer, ["x"], special=True)
    return max(0, len(special[0]) - len(plain[0]))


def _row(passage: Passage, paras: list[str], ids: list[int], label: str) -> dict:
    text = "\n\n".join(paras)
    meta = {k: passage.doc.meta.get(k) for k in SAMPLE_META_KEYS}
    meta.update(task=TASK, passage=passage.index)
    # what a split by sample deals out: a whole JSONL record, or one passage of a book (removed before writing)
    unit = passage.doc.doc_id if passage.doc.kind == "jsonl" else f"{passage.doc.doc_id}#{passage.index}"
    return {"task": TASK, "text": text, "prompt": "", "completion": text, "input_ids": ids, "prompt_len": 0,
            "label": label, "meta": meta, "_unit": unit}


def build_rows(passages: Sequence[Passage], labels: Labels, tokenizer: Any, *, budget: int, min_tokens: int,
               counts: Counter) -> list[dict]:
    """Tokenize passages into labelled rows of at most `budget` tokens, in reading order.

    An over-long passage loses trailing paragraphs ('trimmed') or, one paragraph long, is
    dropped ('too_long'); a book passage under `min_tokens` is dropped ('too_short'). A JSONL
    record is one labelled example whatever its length, so only an empty one is dropped.
    """
    done: list[dict | None] = [None] * len(passages)
    pending = [(i, list(p.paras)) for i, p in enumerate(passages)]
    while pending:
        encoded = encode_batch(tokenizer, ["\n\n".join(paras) for _, paras in pending])
        retry = []
        for (i, paras), ids in zip(pending, encoded):
            passage = passages[i]
            if len(ids) > budget:
                if len(paras) > 1:
                    counts["trimmed"] += 1
                    retry.append((i, paras[:-1]))
                else:
                    counts["too_long"] += 1
                continue
            short = min_tokens if passage.doc.kind != "jsonl" else 1
            if len(ids) < short:
                counts["too_short"] += 1
                continue
            done[i] = _row(passage, paras, ids, labels.by_doc[passage.doc.doc_id])
        pending = retry
    return [r for r in done if r is not None]


def check_classes(rows: list[dict], labels: Labels, docs: Sequence[Document], kept: Sequence[Document],
                  dropped: Counter) -> list[str]:
    """Refuse a class that lost every input to filtering or length limits; returns warnings.

    A class whose inputs were all dropped as copies of other documents (a duplicate book under
    --label book, say) is left out of `labels.classes` with a warning instead.
    """
    present = {r["label"] for r in rows}
    kept_ids = {d.doc_id for d in kept}
    warnings = []
    for cls in [c for c in labels.classes if c not in present]:
        mine = [d for d in docs if labels.by_doc.get(d.doc_id) == cls]
        if all(d.doc_id not in kept_ids and d.paras for d in mine):  # dedup drops whole copies, paragraphs intact
            labels.classes.remove(cls)
            warnings.append(f"class '{cls}' left out: its {len(mine)} input(s) are copies of other documents "
                            "(see duplicates.documents)")
            continue
        reasons = ", ".join(f"{k} {v}" for k, v in dropped.most_common(4)) or "nothing left after cleaning"
        raise LorakitError(f"class '{cls}' has no training example: its {len(mine)} input(s) were all filtered out "
                           f"or too short (dropped overall: {reasons}); check its inputs or leave it out")
    if len(labels.classes) < 2:
        raise LorakitError(f"only one class ('{labels.classes[0]}') is left after deduplication; classification "
                           "needs at least two")
    return warnings


def _split_mode(split_by: str, labels: Labels, docs: Sequence[Document]) -> tuple[bool, list[str]]:
    """(split by book?, warnings): JSONL records that name no book cannot be grouped by book."""
    unbooked = sum(1 for d in docs if d.doc_id in labels.unbooked)
    if split_by != "book" or not unbooked:
        return split_by == "book", []
    if unbooked < len(docs):
        return False, [f"{unbooked} JSONL record(s) name no book (a 'book' or 'title' field): split by "
                       "sample, so one book's records may sit in several splits"]
    return False, []  # JSONL records without book fields: a split by sample is the only one


def _balance(splits: dict[str, list[dict]], classes: list[str], balance: str, seed: int) -> dict:
    info: dict = {"mode": balance}
    if balance == "downsample":
        before = class_counts(splits["train"], classes)
        splits["train"] = downsample(splits["train"], classes, seed)
        info.update(train_before=before, dropped=sum(before.values()) - len(splits["train"]))
    return info


def _split_section(splits: dict[str, list[dict]]) -> dict:
    return {name: {"samples": len(rows), "tokens": sum(sample_tokens(r) for r in rows),
                   "books": sorted({str(r["meta"].get("book")) for r in rows})} for name, rows in splits.items()}


def prepare_classify(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, tokenizer: Any, *,
                     label: str | None = None, seq_len: int = 512, val_fraction: float = 0.05,
                     test_fraction: float = 0.05, split_by: str = "book", balance: str = "none", seed: int = 0,
                     skip_bad: bool = False, min_tokens: int = 32, overwrite: bool = False,
                     keep_front_matter: bool = False, model: str | None = None) -> dict:
    """Build a classification dataset in `out_dir` from books or labelled JSONL; returns its report.

    `label` names the field holding the class (books: a metadata field, default author; JSONL:
    a record field, default label). Raises LorakitError (one line, nothing written) for bad
    options or input, unlabelled inputs, mixed label types, a single class, a class left with no
    training example, and whatever `prepare_dataset` refuses.
    """
    check_classify_options(seq_len, min_tokens, val_fraction, test_fraction, balance, split_by)
    out = Path(out_dir).expanduser()
    check_out(out, inputs, overwrite)
    lap = Laps()

    loaded = read_inputs(inputs, out, skip_bad=skip_bad, keep_front_matter=keep_front_matter)
    labels = label_documents(loaded, label)
    lap("read_and_clean")
    cleaned = clean_inputs(loaded, lap)
    cleaned.docs = labels.keep_labelled(cleaned.docs, skip_bad)
    special = added_special_tokens(tokenizer)
    passages = chunk_documents(cleaned.docs, tokenizer, seq_len - special)
    lap("chunk")
    sample_counts: Counter = Counter()
    rows = build_rows(passages, labels, tokenizer, budget=seq_len - special, min_tokens=min_tokens,
                      counts=sample_counts)
    rows, sample_dups = dedup_samples(rows)
    class_warnings = check_classes(rows, labels, loaded.docs, cleaned.docs, cleaned.filtered + sample_counts)
    lap("samples")
    by_book, mode_warnings = _split_mode(split_by, labels, cleaned.docs)
    groups = [str(r["meta"]["book"]) if by_book else r["_unit"] for r in rows]
    for r in rows:
        del r["_unit"]
    splits, split_info = split_classify(rows, groups, by_book=by_book, val_fraction=val_fraction,
                                        test_fraction=test_fraction, seed=seed)
    sig_cache: dict = {}
    leaks = find_leakage(splits, cache=sig_cache)
    leak_removed = remove_leakage(splits, leaks)
    balance_info = _balance(splits, labels.classes, balance, seed)
    lap("split")
    lint = lint_samples(splits, seq_len=seq_len, split_by=split_info["mode"], sig_cache=sig_cache,
                        cut_books=split_info["cut_in_order"])
    merge_class_lint(lint, splits, labels.classes)
    lap("lint")
    if lint["fatal"]:
        raise LorakitError(f"dataset not written: {lint['fatal'][0]}")
    balance_info["ratio"] = lint["classify"]["balance_ratio"]
    warnings = (input_warnings(loaded) + labels.skipped + class_warnings + mode_warnings + split_info["warnings"]
                + lint["warnings"])
    report = {
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out),
        "task": TASK,
        "label_field": labels.label_field,
        "label_type": labels.kind,
        "classes": labels.classes,
        "class_counts": {name: class_counts(splits[name], labels.classes) for name in SPLITS},
        "balance": balance_info,
        "class_weights": class_weights(splits["train"], labels.classes) if balance == "weights" else None,
        "special_tokens_reserved": special,
        "options": {"task": TASK, "label": label, "balance": balance, "seq_len": seq_len,
                    "val_fraction": val_fraction, "test_fraction": test_fraction, "split_by": split_by, "seed": seed,
                    "min_tokens": min_tokens, "model": model, "skip_bad": skip_bad,
                    "keep_front_matter": keep_front_matter, "inputs": [str(p) for p in inputs]},
        **cleaning_report(cleaned, sample_counts, sample_dups),
        "splits": _split_section(splits),
        "split_info": {k: v for k, v in split_info.items() if k != "books"},
        "leakage": {"pairs_found": len(leaks), "removed": leak_removed, "examples": leaks[:5]},
        "lint": lint,
        "warnings": warnings,
        "timing": lap.report(),
    }
    write_dataset(out, splits, report, overwrite)
    return report


def format_classify_summary(report: dict) -> str:
    """`format_prepare_summary` plus the classes, their counts per split and the balance."""
    lines = format_prepare_summary(report).split("\n")
    classes = report["classes"]
    extra = [f"classes ({len(classes)}, from {report['label_field']}): {', '.join(classes)}"]
    for name in SPLITS:
        counts = report["class_counts"][name]
        extra.append(f"{name:>5} per class: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    bal = report["balance"]
    if bal["mode"] == "downsample":
        extra.append(f"balance: train down-sampled to its smallest class ({bal['dropped']} sample(s) dropped)")
    elif bal["mode"] == "weights":
        weights = ", ".join(f"{c} {w:.3f}" for c, w in zip(classes, report["class_weights"]))
        extra.append(f"balance: class weights (inverse frequency, mean 1) in report.json: {weights}")
    return "\n".join(lines[:-1] + extra + lines[-1:])
