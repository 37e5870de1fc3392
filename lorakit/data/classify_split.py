"""Train / valid / test splits of labelled passages, stratified by class, and class balance.

By book (the default for books, and for JSONL records that name their book): each class's
books are dealt out whole, test first, so the test passages of every class come from a book the
classifier never saw in training; a class keeps at least one book for train. A class left with no
book for valid (two books: one for test, one for train) gets its valid passages from the closing
passages of its largest training book, cut in reading order, so every class is scored during
training (`--eval-every`); test still holds its unseen book. A class with a single book cannot be
split by book at all: its book is cut in reading order instead (train the opening, then valid, then
test the closing passages), so its test passages are at least a part of the book it never saw.
Report warnings name the classes of either fallback.

By sample (JSONL records without a book field, or ``--split-by sample``): each class's records
(all passages of one record together) are dealt out at random in the same way.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence

from lorakit.data.splits import SPLITS

HELD_OUT = ("test", "valid")  # test first: a class with few books needs its unseen book in test


def class_counts(rows: Sequence[dict], classes: Sequence[str]) -> dict[str, int]:
    """Rows per class, every class listed (0 where a class has none), in class-id order."""
    counts = Counter(r["label"] for r in rows)
    return {c: counts.get(c, 0) for c in classes}


def _pick(free: list[str], size: dict[str, int], target: float) -> list[str]:
    """Groups (in `free`'s order) filling `target` rows without overshooting it by half, leaving one
    group of `free` for train; at least one: the smallest when every group is larger than that."""
    taken, acc = [], 0
    for group in free:
        if acc >= target or len(taken) == len(free) - 1:
            break
        if acc + size[group] <= target * 1.5:
            taken.append(group)
            acc += size[group]
    if not taken:
        taken = [free[min(range(len(free)), key=lambda k: (size[free[k]], k))]]
    return taken


def _deal(groups_of: dict[str, list[str]], size: dict[str, int], fractions: dict[str, float],
          rng: random.Random) -> tuple[dict[str, str], list[str], list[str]]:
    """Assign whole groups per class; returns (group -> split, single-group classes, classes without valid)."""
    assigned: dict[str, str] = {}
    single, no_valid = [], []
    for cls, groups in groups_of.items():
        free = sorted(groups)
        rng.shuffle(free)
        if len(free) == 1:
            single.append(cls)
            continue
        total = sum(size[g] for g in free)
        for name in HELD_OUT:
            if fractions[name] <= 0:
                continue
            if len(free) <= 1:  # the last group trains
                no_valid.append(cls)
                break
            for group in _pick(free, size, fractions[name] * total):
                assigned[group] = name
                free.remove(group)
    return assigned, single, no_valid


def _cut_in_order(n: int, fractions: dict[str, float]) -> list[str]:
    """Splits of `n` rows in reading order: train first, then valid, then test; train keeps one or more."""
    want = {name: max(1, round(fractions[name] * n)) if fractions[name] > 0 else 0 for name in HELD_OUT}
    while want["test"] + want["valid"] >= n and want["valid"]:
        want["valid"] -= 1
    while want["test"] >= n and want["test"]:
        want["test"] -= 1
    n_train = n - want["test"] - want["valid"]
    return ["train"] * n_train + ["valid"] * want["valid"] + ["test"] * want["test"]


def _valid_from_train(groups_of: dict[str, list[str]], classes: list[str], assigned: dict[str, str],
                      size: dict[str, int], fraction: float) -> dict[str, int]:
    """book -> how many of its closing rows go to valid, for each of `classes` (none of whose books went
    to valid): the class's largest training book gives `fraction` of the class's rows, keeping one."""
    carved = {}
    for cls in classes:
        training = [g for g in groups_of[cls] if assigned.get(g, "train") == "train"]
        if not training or fraction <= 0:
            continue
        book = max(training, key=lambda g: (size[g], g))
        want = min(max(1, round(fraction * sum(size[g] for g in groups_of[cls]))), size[book] - 1)
        if want > 0:
            carved[book] = want
    return carved


def _primary(labels: list[str]) -> str:
    counts = Counter(labels)
    return min(counts, key=lambda c: (-counts[c], c))


def split_classify(rows: Sequence[dict], groups: Sequence[str], *, by_book: bool, val_fraction: float,
                   test_fraction: float, seed: int = 0) -> tuple[dict[str, list[dict]], dict]:
    """Assign labelled rows (in reading order) to train/valid/test, grouped by `groups` (one per row).

    `by_book`: groups are books, and a class with one book is cut in reading order; else groups are
    records or passages, and a class with one group trains on it alone. Returns (splits, info:
    mode, requested and realised fractions by rows, books per split, the classes each fallback
    touched, warnings).
    """
    fractions = {"train": 1 - val_fraction - test_fraction, "valid": val_fraction, "test": test_fraction}
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        rows_of[g].append(i)
    label_of = {g: _primary([rows[i]["label"] for i in idx]) for g, idx in rows_of.items()}
    groups_of: dict[str, list[str]] = defaultdict(list)
    for g in sorted(rows_of):
        groups_of[label_of[g]].append(g)
    groups_of = dict(sorted(groups_of.items()))
    size = {g: len(idx) for g, idx in rows_of.items()}
    assigned, single, no_valid = _deal(groups_of, size, fractions, random.Random(seed))
    carved = _valid_from_train(groups_of, no_valid, assigned, size, fractions["valid"]) if by_book else {}
    where = ["train"] * len(rows)
    for g, idx in rows_of.items():
        if by_book and label_of[g] in single:
            for i, name in zip(idx, _cut_in_order(len(idx), fractions)):
                where[i] = name
        else:
            for i in idx:
                where[i] = assigned.get(g, "train")
        for i in idx[len(idx) - carved.get(g, 0):] if carved.get(g) else []:  # its closing passages
            where[i] = "valid"
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for row, name in zip(rows, where):
        splits[name].append(row)
    unit = "book" if by_book else "record"
    warnings = []
    mixed = sorted(g for g, idx in rows_of.items() if len({rows[i]["label"] for i in idx}) > 1)
    if mixed:
        warnings.append(f"{len(mixed)} {unit}(s) hold several classes (first: {mixed[0]}); each goes to one split "
                        "with its most common class, so the others may miss a split: try --split-by sample")
    if single and by_book:
        warnings.append(f"{len(single)} class(es) have a single book ({', '.join(single[:5])}"
                        f"{', ...' if len(single) > 5 else ''}): their valid/test passages are that book's closing "
                        "passages, cut in reading order, not an unseen book")
    elif single and fractions["test"] > 0:
        warnings.append(f"{len(single)} class(es) have a single {unit} ({', '.join(single[:5])}), kept for train: "
                        "test has none of them")
    carved_classes = sorted({label_of[g] for g in carved})
    if carved_classes:
        warnings.append(f"{len(carved_classes)} class(es) have no {unit} left for valid after train and test "
                        f"({', '.join(carved_classes[:5])}{', ...' if len(carved_classes) > 5 else ''}): their valid "
                        "passages are the closing passages of a training book, not an unseen book")
    uncovered = [c for c in no_valid if c not in carved_classes]
    if uncovered and fractions["valid"] > 0:
        warnings.append(f"{len(uncovered)} class(es) have too few {unit}s for valid after train and test "
                        f"({', '.join(uncovered[:5])}): valid has none of them")
    realised = {name: round(len(splits[name]) / max(1, len(rows)), 4) for name in SPLITS}
    books = {name: sorted({str(r["meta"].get("book")) for r in splits[name]}) for name in SPLITS}
    info = {"mode": "book" if by_book else "sample", "requested": fractions, "realised": realised, "books": books,
            "single_group_classes": single, "classes_without_valid": uncovered,
            "valid_cut_from_train": {g: n for g, n in sorted(carved.items())},
            "cut_in_order": sorted({g for g in rows_of if by_book and label_of[g] in single} | set(carved)),
            "mixed_groups": mixed[:20],
            "warnings": warnings}
    return splits, info


def downsample(rows: Sequence[dict], classes: Sequence[str], seed: int = 0) -> list[dict]:
    """Keep as many rows of each class as the smallest class has (a random choice), in their order."""
    counts = class_counts(rows, classes)
    keep_n = min(n for n in counts.values() if n)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_class[r["label"]].append(i)
    rng = random.Random(seed)
    kept = {i for cls in classes for i in rng.sample(by_class[cls], min(keep_n, len(by_class[cls])))}
    return [r for i, r in enumerate(rows) if i in kept]


def class_weights(rows: Sequence[dict], classes: Sequence[str]) -> list[float]:
    """Per-class loss weights in class-id order: inverse frequency in `rows`, scaled to mean 1.

    weight_c * count_c is the same for every class, so each class adds equally to a weighted loss.
    """
    counts = class_counts(rows, classes)
    inverse = [1 / counts[c] for c in classes]  # lint refuses a class without training rows first
    mean = sum(inverse) / len(inverse)
    return [w / mean for w in inverse]
