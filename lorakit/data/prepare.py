"""`prepare_dataset`: from books or JSONL to train/valid/test JSONL plus report.json, atomically.

Stages: read and clean -> filter paragraphs -> deduplicate documents and paragraphs ->
chunk by tokens -> render samples -> split (by book) -> remove cross-split leakage ->
lint -> write into a temporary folder renamed into place at the end, so a failure never
leaves a half-written dataset.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from lorakit.atomic import atomic_dir
from lorakit.data.chunking import chunk_documents
from lorakit.data.dedup import dedup_documents, dedup_paragraphs, near_duplicate_pairs
from lorakit.data.documents import Document, Loaded, Pair, load_inputs
from lorakit.data.filters import filter_documents, paragraph_reason
from lorakit.data.lint import lint_samples
from lorakit.data.samples import FORMATS, build_samples, plan_drafts, prompt_overhead
from lorakit.data.schema import SPLIT_FILES, write_rows
from lorakit.data.splits import SPLITS, find_leakage, remove_leakage, sample_content, split_samples, sample_tokens
from lorakit.data.textutil import dedup_key
from lorakit.errors import LorakitError
from lorakit.outputs import check_output, check_replace, foreign_files

log = logging.getLogger("lorakit.data")
REPORT_VERSION = 1
# every file lorakit writes into a dataset folder (replay.json: `lorakit data replay`); --overwrite
# replaces a folder only when it holds nothing else
DATASET_FILES = (*SPLIT_FILES.values(), "report.json", "replay.json")


class Laps:
    """Seconds per stage of a build: each call records the time since the previous one."""

    def __init__(self) -> None:
        self.timing: dict[str, float] = {}
        self.start = self._tick = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timing[stage] = round(now - self._tick, 2)
        self._tick = now

    def report(self) -> dict[str, float]:
        """The stages' seconds and the total."""
        return {**self.timing, "total": round(time.perf_counter() - self.start, 2)}


def check_options(fmt: str, seq_len: int, min_tokens: int, val_fraction: float, test_fraction: float) -> None:
    """Refuse, in one line, options that cannot make a dataset (each alone, and together)."""
    if fmt not in FORMATS:
        raise LorakitError(f"unknown --format '{fmt}'; use one of: {', '.join(FORMATS)}")
    if seq_len < 64:
        raise LorakitError(f"--seq-len {seq_len} is too small for prose passages; use 64 or more (512 is typical)")
    if not 0 <= min_tokens < seq_len // 2:
        raise LorakitError(f"--min-tokens must be between 0 and half of --seq-len (got {min_tokens})")
    for name, frac in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= frac < 1:  # NaN fails this too
            raise LorakitError(f"{name} must be at least 0 and below 1 (got {frac})")
    if val_fraction + test_fraction >= 1:
        raise LorakitError("--val-fraction plus --test-fraction must leave something to train on (sum < 1)")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """An existing --out is replaced only with --overwrite and only when it holds a dataset alone."""
    check_replace(out_dir, overwrite, "--overwrite", lambda folder: foreign_files(folder, DATASET_FILES))


def check_out(out_dir: Path, inputs: Sequence[str | os.PathLike], overwrite: bool) -> None:
    """Refuse an --out that is or contains an input, or is in a model cache, or holds other files.

    --out inside an input *folder* is allowed: the reader skips it (`load_inputs(exclude=)`).
    """
    check_output(out_dir, [("the --input", p) for p in inputs], nested_ok=True)
    _check_out_dir(out_dir, overwrite)


def _filter_pairs(pairs: Sequence[Pair], filtered: Counter) -> tuple[list[Pair], dict]:
    """Drop pairs whose completion is not English prose, and exact/near duplicate pairs."""
    kept = []
    for pair in pairs:
        reason = "empty" if not pair.completion.strip() else paragraph_reason(pair.completion)
        if reason:
            filtered[f"pairs_{reason}"] += 1
        else:
            kept.append(pair)
    dups = near_duplicate_pairs([("pair", f"{p.prompt}\n{p.completion}") for p in kept])
    drop = {d["b"] for d in dups}
    info = {"exact": sum(1 for d in dups if d["similarity"] == 1.0), "near": sum(1 for d in dups if d["similarity"] < 1.0),
            "dropped": len(drop)}
    return [p for i, p in enumerate(kept) if i not in drop], info


def dedup_samples(samples: list[dict]) -> tuple[list[dict], int]:
    """Drop samples whose content repeats an earlier one exactly (case, punctuation and spacing aside)."""
    seen: set[str] = set()
    out = []
    for s in samples:
        key = dedup_key(sample_content(s))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out, len(samples) - len(out)


@dataclass
class Cleaned:
    """What filtering and deduplication kept of the inputs, and what they removed (for the report)."""

    loaded: Loaded
    docs: list[Document]
    pairs: list[Pair]
    filtered: Counter  # paragraphs (and pairs_*) dropped, by reason
    examples: dict[str, list[str]]
    pair_dups: dict
    doc_dups: list[dict]
    para_counts: Counter
    para_pairs: Counter


def read_inputs(inputs: Sequence[str | os.PathLike], out: Path, *, skip_bad: bool,
                keep_front_matter: bool) -> Loaded:
    """Read and clean every input (never the files under `out`); refuses inputs with no usable text."""
    loaded = load_inputs(inputs, skip_bad=skip_bad, keep_front_matter=keep_front_matter, exclude=out)
    log.info("read %d file(s): %d document(s), %d ready pair(s)", len(loaded.files), len(loaded.docs), len(loaded.pairs))
    if not loaded.docs and not loaded.pairs:
        why = f"; {len(loaded.bad)} bad input(s) skipped" if loaded.bad else ""
        raise LorakitError(f"no usable text in the inputs{why}: pass .txt books or .jsonl files with text")
    return loaded


def clean_inputs(loaded: Loaded, lap: Callable[[str], None] = lambda stage: None) -> Cleaned:
    """Filter paragraphs and pairs, then drop duplicate documents and paragraphs (`lap` after each stage)."""
    filtered: Counter = Counter()
    examples: dict[str, list[str]] = {}
    filter_documents(loaded.docs, filtered, examples)
    pairs, pair_dups = _filter_pairs(loaded.pairs, filtered)
    lap("filter")
    docs, doc_dups = dedup_documents(loaded.docs)
    for dup in doc_dups:
        log.info("duplicate: %s is a copy of %s (%s, similarity %.3f)", dup["file"], dup["duplicate_of"],
                 dup["method"], dup["similarity"])
    para_counts: Counter = Counter()
    para_pairs: Counter = Counter()
    dedup_paragraphs(docs, para_counts, para_pairs)
    docs = [d for d in docs if d.paras]
    lap("dedup")
    return Cleaned(loaded, docs, pairs, filtered, examples, pair_dups, doc_dups, para_counts, para_pairs)


def _fallbacks(loaded: Loaded) -> list[dict]:
    return [{"file": f["file"], "encoding": f["encoding"]} for f in loaded.files if f["encoding"] in ("cp1252", "latin-1")]


def input_warnings(loaded: Loaded) -> list[str]:
    """Report warnings about the inputs: encoding fallbacks and skipped bad inputs."""
    warnings = [f"{f['file']}: not UTF-8, read as {f['encoding']} (Latin-1 fallback); check accented letters"
                for f in _fallbacks(loaded)]
    return warnings + [f"{b['file']}{':' + str(b['line']) if b.get('line') else ''}: skipped ({b['reason']})"
                       for b in loaded.bad]


def cleaning_report(cleaned: Cleaned, sample_counts: Counter, sample_dups: int) -> dict:
    """The report's "inputs", "cleaning", "filtered" and "duplicates" sections."""
    loaded, filtered, para_counts = cleaned.loaded, cleaned.filtered, cleaned.para_counts
    return {
        "inputs": {"files": loaded.files, "ignored": loaded.ignored, "bad": loaded.bad,
                   "encoding_fallbacks": _fallbacks(loaded)},
        "cleaning": {"removed": dict(sorted(loaded.removed.items()))},
        "filtered": {"paragraphs": {k: v for k, v in filtered.items() if not k.startswith("pairs_")},
                     "pairs": {k[6:]: v for k, v in filtered.items() if k.startswith("pairs_")},
                     "samples": dict(sample_counts), "examples": cleaned.examples},
        "duplicates": {
            "documents": cleaned.doc_dups,
            "paragraphs": {"exact": para_counts["paragraphs_exact"], "near": para_counts["paragraphs_near"],
                           "by_book": [{"book": a, "duplicate_of": b, "count": n}
                                       for (a, b), n in cleaned.para_pairs.most_common()]},
            "pairs": cleaned.pair_dups,
            "samples_exact": sample_dups,
        },
    }


def write_dataset(out_dir: Path, splits: dict[str, list[dict]], report: dict, overwrite: bool = False) -> None:
    """Write the split files and report.json into a temp folder, then swap it in as `out_dir`."""
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            write_rows(tmp / f"{name}.jsonl", splits[name])
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        _check_out_dir(out_dir, overwrite)  # again: something may have been put there while we worked


def prepare_dataset(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, tokenizer: Any, *,
                    fmt: str = "text", seq_len: int = 512, val_fraction: float = 0.05, test_fraction: float = 0.05,
                    split_by: str = "book", seed: int = 0, skip_bad: bool = False, min_tokens: int = 32,
                    overwrite: bool = False, keep_front_matter: bool = False, model: str | None = None) -> dict:
    """Build a dataset in `out_dir` from `inputs` (files or folders) and return its report.

    Raises LorakitError (nothing written) for bad input without `skip_bad`, an `out_dir` that
    overlaps an input or a model cache, an existing non-empty `out_dir` without `overwrite` (or,
    with it, holding files that are not a dataset's), or when no sample survives.
    """
    check_options(fmt, seq_len, min_tokens, val_fraction, test_fraction)
    out = Path(out_dir).expanduser()
    check_out(out, inputs, overwrite)
    lap = Laps()

    loaded = read_inputs(inputs, out, skip_bad=skip_bad, keep_front_matter=keep_front_matter)
    lap("read_and_clean")
    cleaned = clean_inputs(loaded, lap)
    docs, pairs = cleaned.docs, cleaned.pairs
    overhead: dict[tuple, int] = {}
    budgets = {}
    for d in docs:
        key = (d.meta.get("author"), d.meta.get("title"), d.meta.get("translator"))
        if key not in overhead:
            overhead[key] = prompt_overhead(tokenizer, fmt, d.meta)
        budgets[d.doc_id] = seq_len - overhead[key]
    passages = chunk_documents(docs, tokenizer, budgets)
    lap("chunk")
    sample_counts: Counter = Counter()
    drafts = plan_drafts(passages, pairs, fmt, seed)
    samples = build_samples(drafts, tokenizer, fmt=fmt, seq_len=seq_len, min_tokens=min_tokens, counts=sample_counts)
    samples, sample_dups = dedup_samples(samples)
    lap("samples")
    if not samples:
        reasons = ", ".join(f"{k} {v}" for k, v in (cleaned.filtered + sample_counts).most_common())
        reasons = reasons or "nothing left after cleaning"
        raise LorakitError(f"all input was filtered out ({reasons}); check the inputs or lower --min-tokens")
    splits, split_info = split_samples(samples, val_fraction=val_fraction, test_fraction=test_fraction,
                                       split_by=split_by, seed=seed)
    sig_cache: dict = {}
    leaks = find_leakage(splits, cache=sig_cache)
    leak_removed = remove_leakage(splits, leaks)
    lap("split")
    lint = lint_samples(splits, seq_len=seq_len, split_by=split_info["mode"], sig_cache=sig_cache)
    lap("lint")
    if lint["fatal"]:
        raise LorakitError(f"dataset not written: {lint['fatal'][0]}")
    warnings = input_warnings(loaded) + split_info["warnings"] + lint["warnings"]
    report = {
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out),
        "options": {"format": fmt, "seq_len": seq_len, "val_fraction": val_fraction, "test_fraction": test_fraction,
                    "split_by": split_by, "seed": seed, "min_tokens": min_tokens, "model": model,
                    "skip_bad": skip_bad, "keep_front_matter": keep_front_matter,
                    "inputs": [str(p) for p in inputs]},
        **cleaning_report(cleaned, sample_counts, sample_dups),
        "splits": {name: {"samples": len(splits[name]), "tokens": sum(sample_tokens(s) for s in splits[name]),
                          "books": split_info["books"][name]} for name in SPLITS},
        "split_info": {k: v for k, v in split_info.items() if k != "books"},
        "leakage": {"pairs_found": len(leaks), "removed": leak_removed, "examples": leaks[:5]},
        "lint": lint,
        "warnings": warnings,
        "timing": lap.report(),
    }
    write_dataset(out, splits, report, overwrite)
    return report
