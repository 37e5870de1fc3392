"""Train / valid / test splits: whole books by default, and a near-duplicate leakage check.

Splitting by book keeps every passage of a test book out of training, so the test
loss measures style transfer rather than memorised text. Book sizes are uneven, so the
realised fractions (by tokens) are reported next to the requested ones.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Sequence

from lorakit.data.dedup import near_duplicate_pairs
from lorakit.errors import LorakitError

SPLITS = ("train", "valid", "test")
SPECIAL_TOKEN_RE = re.compile(r"<\|[^|>]{1,40}\|>|</?s>")
LEAK_THRESHOLD = 0.8


def sample_tokens(sample: dict) -> int:
    """Token count of a sample (its input_ids, else a characters/4 estimate)."""
    ids = sample.get("input_ids")
    if isinstance(ids, list):
        return len(ids)
    return max(1, len(str(sample.get("text") or sample_content(sample))) // 4)


def sample_content(sample: dict) -> str:
    """The words of a sample without chat scaffolding (message contents, or prompt + completion)."""
    msgs = sample.get("messages")
    if isinstance(msgs, list) and msgs:
        text = "\n\n".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
    elif "prompt" in sample or "completion" in sample:
        text = f"{sample.get('prompt', '')}{sample.get('completion', '')}"
    else:
        text = str(sample.get("text", ""))
    return SPECIAL_TOKEN_RE.sub(" ", text)


def _book(sample: dict) -> str:
    meta = sample.get("meta") if isinstance(sample.get("meta"), dict) else {}
    return str(meta.get("book") or meta.get("source") or "unknown")


def _by_sample(samples: Sequence[dict], fractions: dict[str, float], rng: random.Random) -> dict[str, list[dict]]:
    order = list(range(len(samples)))
    rng.shuffle(order)
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    pos = 0
    for name in ("test", "valid"):
        n = round(fractions[name] * len(samples))
        if fractions[name] > 0 and n == 0 and len(samples) >= 3:
            n = 1
        out[name] = [samples[i] for i in sorted(order[pos : pos + n])]
        pos += n
    out["train"] = [samples[i] for i in sorted(order[pos:])]
    return out


def _by_book(samples: Sequence[dict], fractions: dict[str, float], rng: random.Random) -> tuple[dict, dict]:
    size: dict[str, int] = defaultdict(int)
    for s in samples:
        size[_book(s)] += sample_tokens(s)
    total = sum(size.values())
    order = sorted(size)
    rng.shuffle(order)
    assigned: dict[str, str] = {}
    for name in ("test", "valid"):
        target = fractions[name] * total
        if target <= 0:
            continue
        acc = 0
        for book in order:
            if acc >= target or len(order) - len(assigned) <= 1:  # always leave a book to train on
                break
            # take a book if it does not overshoot the target by much (books are big and uneven)
            if book not in assigned and acc + size[book] <= target * 1.5:
                assigned[book] = name
                acc += size[book]
        if acc == 0:  # every book is larger than the target: take the smallest one left
            free = sorted((b for b in order if b not in assigned), key=lambda b: (size[b], b))
            if len(free) > 1:
                assigned[free[0]] = name
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for s in samples:
        out[assigned.get(_book(s), "train")].append(s)
    books = {name: sorted({_book(s) for s in out[name]}) for name in SPLITS}
    return out, books


def split_samples(samples: Sequence[dict], *, val_fraction: float, test_fraction: float,
                  split_by: str = "book", seed: int = 0) -> tuple[dict[str, list[dict]], dict]:
    """Assign samples to train/valid/test; returns (splits, info with realised fractions and warnings)."""
    for name, frac in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise LorakitError(f"{name} must be between 0 and 1 (got {frac})")
    if val_fraction + test_fraction >= 1:
        raise LorakitError("--val-fraction plus --test-fraction must leave something to train on (sum < 1)")
    if split_by not in ("book", "sample"):
        raise LorakitError(f"--split-by must be 'book' or 'sample' (got '{split_by}')")
    fractions = {"train": 1 - val_fraction - test_fraction, "valid": val_fraction, "test": test_fraction}
    rng = random.Random(seed)
    warnings: list[str] = []
    n_books = len({_book(s) for s in samples})
    needed = 1 + sum(1 for f in (val_fraction, test_fraction) if f > 0)
    mode = split_by
    if split_by == "book" and n_books < needed:
        mode = "sample"
        warnings.append(f"only {n_books} book(s) for {needed} splits: split by sample instead of by book "
                        "(passages of one book are in several splits)")
    if mode == "book":
        splits, books = _by_book(samples, fractions, rng)
    else:
        splits = _by_sample(samples, fractions, rng)
        books = {name: sorted({_book(s) for s in splits[name]}) for name in SPLITS}
    total = sum(sample_tokens(s) for s in samples) or 1
    realised = {name: round(sum(sample_tokens(s) for s in splits[name]) / total, 4) for name in SPLITS}
    for name in ("valid", "test"):
        if fractions[name] > 0 and not splits[name]:
            warnings.append(f"the {name} split is empty (too few samples or books)")
        elif fractions[name] > 0 and not 0.5 <= realised[name] / fractions[name] <= 2:
            warnings.append(f"the {name} split holds {realised[name]:.1%} of tokens (asked {fractions[name]:.1%}): "
                            "whole books do not divide finer; use --split-by sample for exact fractions")
    info = {"mode": mode, "requested": fractions, "realised": realised, "books": books, "warnings": warnings}
    return splits, info


def find_leakage(splits: dict[str, list[dict]], threshold: float = LEAK_THRESHOLD,
                 cache: dict | None = None) -> list[dict]:
    """Near-duplicate pairs whose two samples sit in different splits (`cache`: text -> signature)."""
    items: list[tuple[str, str]] = []
    index: list[tuple[str, int]] = []
    for name in SPLITS:
        for i, s in enumerate(splits.get(name, [])):
            items.append((name, sample_content(s)))
            index.append((name, i))
    pairs = near_duplicate_pairs(items, threshold, cache=cache)
    out = []
    for p in pairs:
        if p["group_a"] != p["group_b"]:
            (sa, ia), (sb, ib) = index[p["a"]], index[p["b"]]
            out.append({"split_a": sa, "index_a": ia, "split_b": sb, "index_b": ib, "similarity": p["similarity"]})
    return out


def remove_leakage(splits: dict[str, list[dict]], pairs: Sequence[dict]) -> int:
    """Drop the held-out member of each leaking pair (test before valid; train is kept); returns the count."""
    rank = {"train": 0, "valid": 1, "test": 2}
    drop: dict[str, set[int]] = defaultdict(set)
    for p in pairs:
        a, b = (p["split_a"], p["index_a"]), (p["split_b"], p["index_b"])
        split, idx = max(a, b, key=lambda x: rank[x[0]])
        drop[split].add(idx)
    for split, idxs in drop.items():
        splits[split] = [s for i, s in enumerate(splits[split]) if i not in idxs]
    return sum(len(v) for v in drop.values())
