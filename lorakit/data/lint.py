"""Lint a dataset: balance, lengths, duplicates, formatting, template variety, leakage.

`lint_samples` works on splits in memory (prepare runs it before writing);
`lint_dataset` reads a directory, including one written by hand. Problems are
``fatal`` (the dataset cannot be trained on as it is) or ``warnings``.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lorakit.data.classify_lint import is_classify, merge_class_lint
from lorakit.data.dedup import near_duplicate_pairs
from lorakit.data.schema import SPLIT_FILES, BadLine, missing_fields, read_rows
from lorakit.data.splits import SPLITS, sample_content, sample_tokens
from lorakit.errors import LorakitError

IMBALANCE_SHARE = 0.5
TEMPLATE_SHARE = 0.25
LONG_LINE = 4000
FORMAT_CHECKS: dict[str, re.Pattern] = {
    "double_spaces": re.compile(r"\S  +\S"),
    "markup": re.compile(r"<[A-Za-z/][^<>\n]{0,40}>|\[(?:Illustration|Footnote|Transcriber|Sidenote)|&(?:[a-z]{2,6}|#\d+);"
                         r"|(?<![\w_])_[^\s_][^_\n]{0,80}_(?![\w_])|\*{3,}|\{\{|\}\}"),
    "control_chars": re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"),
    "mojibake": re.compile(r"Ã[\u0080-\u00bf]|â€|Â[\u00a0-\u00bf]|\ufffd|Ð[\u0080-\u00bf]"),
}
# Capitalised words that do not start a sentence (names, titles), with the small words inside titles.
NAME_RE = re.compile(r"(?<=[^\s.!?] )[A-Z](?:[\w’'\-]+|\.)(?:(?: (?:and|of|the|with|in|on|a|de|von|van))*"
                     r" [A-Z](?:[\w’'\-]+|\.))*")


def _unbalanced(text: str) -> bool:
    """A paragraph closes more quotes than it opens (or has an odd count of straight quotes mid-speech).

    A paragraph may open a quote and not close it: in printed books a long speech reopens the
    quote on every paragraph and closes it only at the end.
    """
    for para in text.split("\n\n"):
        if para.count("”") > para.count("“"):
            return True
        if para.count('"') % 2 == 1 and not para.lstrip().startswith('"'):
            return True
    return False


def _skeleton(sample: dict) -> str | None:
    """The prompt's instruction with names and numbers masked: equal skeletons = same template."""
    msgs = sample.get("messages")
    if isinstance(msgs, list):
        users = [m.get("content", "") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else ""
    else:
        prompt = sample.get("prompt") or ""
    line = prompt.strip().split("\n", 1)[0].strip()
    if not line:
        return None
    line = NAME_RE.sub("X", line)
    return re.sub(r"\d+", "0", line)[:120]


def _histogram(lengths: list[int], seq_len: int | None) -> dict:
    top = max(lengths + [seq_len or 0, 16])
    edges = [0, 16]
    while edges[-1] < top:
        edges.append(edges[-1] * 2)
    counts = [0] * (len(edges) - 1)
    for n in lengths:
        for i in range(len(edges) - 1):
            if n <= edges[i + 1]:
                counts[i] += 1
                break
    return {"edges": edges, "counts": counts}


def _share_table(rows: dict[str, Counter], total: int) -> dict:
    return {k: {"samples": v["samples"], "tokens": v["tokens"], "share": round(v["tokens"] / total, 4) if total else 0}
            for k, v in sorted(rows.items(), key=lambda kv: -kv[1]["tokens"])}


def lint_samples(splits: dict[str, list[dict]], *, seq_len: int | None = None, tokenizer: Any = None,
                 split_by: str | None = None, sig_cache: dict | None = None, cut_books: Collection[str] = ()) -> dict:
    """Lint report of in-memory splits (see module docstring for the keys).

    `sig_cache` (text -> MinHash) reuses signatures computed by an earlier leakage check.
    `cut_books`: books the splitter cut in reading order on purpose (its report warns of them), not
    counted as books in several splits.
    """
    fatal: list[str] = []
    warnings: list[str] = []
    all_samples = [(name, i, s) for name in SPLITS for i, s in enumerate(splits.get(name, []))]
    if not all_samples:
        fatal.append("the dataset has no samples")
    elif not splits.get("train"):
        fatal.append("the train split is empty")
    lengths, authors, books, tasks = [], defaultdict(Counter), defaultdict(Counter), Counter()
    fmt_counts: Counter = Counter()
    fmt_examples: dict[str, list[dict]] = defaultdict(list)
    skeletons: Counter = Counter()
    too_long, no_ids, decode_bad = 0, 0, 0
    book_splits: dict[str, set[str]] = defaultdict(set)
    for name, i, s in all_samples:
        meta = s.get("meta") if isinstance(s.get("meta"), dict) else {}
        if isinstance(s.get("input_ids"), list):
            n = len(s["input_ids"])
            if tokenizer is not None and tokenizer.decode(s["input_ids"]) != s.get("text"):
                decode_bad += 1
        else:
            no_ids += 1
            n = len(tokenizer(s.get("text") or sample_content(s))["input_ids"]) if tokenizer else sample_tokens(s)
        lengths.append(n)
        too_long += bool(seq_len and n > seq_len)
        for table, key in ((authors, meta.get("author") or "unknown"), (books, meta.get("book") or "unknown")):
            table[key]["samples"] += 1
            table[key]["tokens"] += n
        book_splits[str(meta.get("book") or "unknown")].add(name)
        tasks[meta.get("task") or "unknown"] += 1
        content = sample_content(s)
        checks = {k: rx.search(content) for k, rx in FORMAT_CHECKS.items()}
        checks["unbalanced_quotes"] = _unbalanced(content)
        checks["long_lines"] = any(len(line) > LONG_LINE for line in content.split("\n"))
        for issue, hit in checks.items():
            if hit:
                fmt_counts[issue] += 1
                if len(fmt_examples[issue]) < 3:
                    at = hit.start() if isinstance(hit, re.Match) else 0
                    fmt_examples[issue].append({"split": name, "line": s.get("_line", i + 1),
                                                "excerpt": content[max(0, at - 30):at + 50]})
        sk = _skeleton(s)
        if sk:
            skeletons[sk] += 1
    total_tokens = sum(lengths)
    if too_long:
        fatal.append(f"{too_long} sample(s) are longer than seq_len {seq_len}")
    if no_ids:
        warnings.append(f"{no_ids} sample(s) have no input_ids/prompt_len, which training needs: "
                        "tokenize them with `lorakit data prepare --input FILE.jsonl --out DIR`")
    if decode_bad:
        warnings.append(f"{decode_bad} sample(s): input_ids do not decode to text with this tokenizer "
                        "(prepared for another model?)")
    author_table = _share_table(authors, total_tokens)
    for author, row in author_table.items():
        if author != "unknown" and row["share"] > IMBALANCE_SHARE and len(author_table) > 1:
            warnings.append(f"imbalance: {author} has {row['share']:.0%} of all tokens (over {IMBALANCE_SHARE:.0%}); "
                            "the model will mostly learn this author")
    prompted = sum(skeletons.values())
    over = [(sk, n) for sk, n in skeletons.most_common() if prompted >= 20 and n / prompted > TEMPLATE_SHARE]
    for sk, n in over:
        warnings.append(f"prompt template over-represented: {n / prompted:.0%} of prompts are '{sk}'")
    for issue, n in sorted(fmt_counts.items()):
        warnings.append(f"formatting: {n} sample(s) with {issue.replace('_', ' ')}")
    dup_pairs = near_duplicate_pairs([(n, sample_content(s)) for n, _, s in all_samples], cache=sig_cache)
    same = [p for p in dup_pairs if p["group_a"] == p["group_b"]]
    exact = sum(1 for p in same if p["similarity"] == 1.0)
    if same:
        warnings.append(f"duplicates: {len(same)} near-duplicate sample pair(s) within splits ({exact} exact)")
    leaks = [p for p in dup_pairs if p["group_a"] != p["group_b"]]
    if leaks:
        warnings.append(f"leakage: {len(leaks)} near-duplicate pair(s) across splits")
    shared_books = sorted(b for b, names in book_splits.items()
                          if len(names) > 1 and b != "unknown" and b not in set(cut_books))
    if shared_books and split_by == "book":
        warnings.append(f"leakage: {len(shared_books)} book(s) appear in more than one split")
    for name in ("valid", "test"):
        if all_samples and not splits.get(name):
            warnings.append(f"the {name} split is empty")
    return {
        "splits": {n: {"samples": len(splits.get(n, [])),
                       "tokens": sum(sample_tokens(s) for s in splits.get(n, []))} for n in SPLITS},
        "total": {"samples": len(all_samples), "tokens": total_tokens},
        "tokens_estimated": bool(no_ids) and tokenizer is None,
        "authors": author_table,
        "books": {b: {**row, "splits": sorted(book_splits[b])} for b, row in _share_table(books, total_tokens).items()},
        "tasks": dict(tasks.most_common()),
        "length_histogram": _histogram(lengths, seq_len),
        "duplicates": {"pairs": len(same), "exact": exact, "examples": same[:5]},
        "leakage": {"pairs": len(leaks), "examples": leaks[:5], "books_in_several_splits": shared_books},
        "formatting": {"counts": dict(fmt_counts), "examples": dict(fmt_examples)},
        "templates": {"prompted_samples": prompted, "distinct": len(skeletons),
                      "top": [[sk, n, round(n / prompted, 4)] for sk, n in skeletons.most_common(10)]},
        "warnings": warnings,
        "fatal": fatal,
        "ok": not fatal,
    }


def lint_dataset(path: str | Path, tokenizer: Any = None) -> dict:
    """Lint a dataset directory (train/valid/test.jsonl, report.json if present) or a single JSONL file."""
    path = Path(path)
    if path.is_file():
        files = {"train": path}
        report_file = path.parent / "report.json"
    elif path.is_dir():
        files = {name: path / fname for name, fname in SPLIT_FILES.items() if (path / fname).is_file()}
        report_file = path / "report.json"
        if not files:
            raise LorakitError(f"{path}: no train.jsonl, valid.jsonl or test.jsonl here; "
                               "pass a folder written by `lorakit data prepare` or a .jsonl file")
    else:
        raise LorakitError(f"{path}: no such folder or file")
    prepared: dict = {}
    if report_file.is_file() and path.is_dir():
        try:
            prepared = json.loads(report_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            prepared = {}
    splits: dict[str, list[dict]] = {}
    bad: list[BadLine] = []
    gaps = 0
    for name, file in files.items():
        read = read_rows(file, "content", lenient=True)  # bad lines are listed, the rest linted
        for row, line in zip(read.rows, read.lines):
            row["_line"] = line  # where lint_samples points its examples
        splits[name] = read.rows
        bad.extend(read.bad)
        gaps += sum(1 for row in read.rows if missing_fields(row))
    options = prepared.get("options", {}) if isinstance(prepared, dict) else {}
    cut = prepared.get("split_info", {}).get("cut_in_order", []) if isinstance(prepared, dict) else []
    report = lint_samples(splits, seq_len=options.get("seq_len"), tokenizer=tokenizer,
                          split_by=options.get("split_by"), cut_books=cut if isinstance(cut, list) else [])
    if is_classify(splits, prepared):
        merge_class_lint(report, splits, prepared.get("classes") if isinstance(prepared, dict) else None)
    report["path"] = str(path)
    report["schema_errors"] = [{"file": str(b.file), "line": b.line, "message": b.problem} for b in bad[:50]]
    if bad:
        report["fatal"].insert(0, f"{len(bad)} bad line(s), first: {bad[0].message}")
        report["ok"] = False
    if gaps:
        report["schema_gaps"] = gaps
    if prepared.get("duplicates"):
        # what `prepare` removed before these files were written (only its report knows)
        report["removed_when_prepared"] = {
            "duplicate_documents": [{k: d[k] for k in ("file", "duplicate_of", "method", "similarity")}
                                    for d in prepared["duplicates"].get("documents", [])],
            "duplicate_paragraphs": {k: prepared["duplicates"]["paragraphs"].get(k, 0) for k in ("exact", "near")},
            "duplicate_samples": prepared["duplicates"].get("samples_exact", 0),
            "filtered": {k: v for k, v in prepared.get("filtered", {}).items() if k != "examples"},
        }
    return report
