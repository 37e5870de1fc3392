"""Human-readable summaries of prepare and lint reports (what was kept, removed, and why)."""

from __future__ import annotations

from pathlib import Path


def _n(x: int) -> str:
    return f"{x:,}"


def _lint_lines(lint: dict) -> list[str]:
    lines = []
    authors = lint.get("authors", {})
    if authors:
        shares = ", ".join(f"{a} {r['share']:.0%}" for a, r in list(authors.items())[:8])
        lines.append(f"authors (share of tokens): {shares}")
    books = lint.get("books", {})
    if books:
        name, row = next(iter(books.items()))
        lines.append(f"books: {len(books)}, largest {name} ({row['share']:.0%} of tokens)")
    hist = lint.get("length_histogram")
    if hist and hist["counts"]:
        bins = [f"<={hist['edges'][i + 1]}:{c}" for i, c in enumerate(hist["counts"]) if c]
        lines.append("sample tokens: " + " ".join(bins))
    tasks = lint.get("tasks", {})
    if tasks and set(tasks) != {"text"}:
        lines.append("tasks: " + ", ".join(f"{t} {n}" for t, n in tasks.items()))
    return lines


def format_prepare_summary(report: dict) -> str:
    """The end-of-run summary of `lorakit data prepare`."""
    out = []
    files = report["inputs"]["files"]
    kinds = {}
    for f in files:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    out.append(f"read {len(files)} file(s): " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if report["inputs"]["ignored"]:
        out.append(f"  ignored {len(report['inputs']['ignored'])} file(s) of other types")
    for bad in report["inputs"]["bad"]:
        where = f"{bad['file']}:{bad['line']}" if bad.get("line") else bad["file"]
        out.append(f"  skipped {where}: {bad['reason']}")
    for fb in report["inputs"]["encoding_fallbacks"]:
        out.append(f"  {Path(fb['file']).name}: not UTF-8, read as {fb['encoding']}")
    removed = {k: v for k, v in report["cleaning"]["removed"].items() if v}
    if removed:
        out.append("cleaning removed: " + ", ".join(f"{k.replace('_', ' ')} {_n(v)}" for k, v in removed.items()))
    filt = report["filtered"]
    parts = [f"{k.replace('_', '-')} paragraphs {_n(v)}" for k, v in filt["paragraphs"].items() if v]
    parts += [f"{k.replace('_', '-')} pairs {_n(v)}" for k, v in filt["pairs"].items() if v]
    parts += [f"{k.replace('_', '-')} samples {_n(v)}" for k, v in filt["samples"].items() if v and k != "trimmed"]
    if parts:
        out.append("filtered: " + ", ".join(parts))
    dups = report["duplicates"]
    for d in dups["documents"]:
        out.append(f"duplicate dropped: {Path(d['file']).name} duplicates {Path(d['duplicate_of']).name} "
                   f"({d['method']}, {d['similarity']:.2%} of word 5-grams shared)")
    para = dups["paragraphs"]
    if para["exact"] or para["near"]:
        out.append(f"duplicate paragraphs dropped: {para['exact']} exact, {para['near']} near")
    if dups["samples_exact"] or dups["pairs"].get("dropped"):
        out.append(f"duplicate samples dropped: {dups['samples_exact'] + dups['pairs'].get('dropped', 0)}")
    for name, row in report["splits"].items():
        books = f", {len(row['books'])} book(s)" if row["books"] else ""
        out.append(f"{name:>5}: {_n(row['samples'])} samples, {_n(row['tokens'])} tokens{books}")
    leak = report["leakage"]
    out.append(f"leakage: {leak['pairs_found']} near-duplicate pair(s) across splits"
               + (f", {leak['removed']} held-out sample(s) removed" if leak["removed"] else ""))
    out += _lint_lines(report["lint"])
    for w in report["warnings"]:
        out.append(f"warning: {w}")
    out.append(f"wrote {report['out_dir']}/{{train,valid,test}}.jsonl and report.json "
               f"in {report['timing']['total']:.1f}s")
    return "\n".join(out)


def format_lint_summary(report: dict) -> str:
    """The summary printed by `lorakit data lint`."""
    out = [f"{report['path']}: {_n(report['total']['samples'])} samples, {_n(report['total']['tokens'])} tokens"
           + (" (estimated)" if report.get("tokens_estimated") else "")]
    for name, row in report["splits"].items():
        out.append(f"{name:>5}: {_n(row['samples'])} samples, {_n(row['tokens'])} tokens")
    out += _lint_lines(report)
    removed = report.get("removed_when_prepared")
    if removed:
        for d in removed["duplicate_documents"]:
            out.append(f"removed when prepared: {Path(d['file']).name} (duplicate of {Path(d['duplicate_of']).name}, "
                       f"{d['method']}, similarity {d['similarity']:.4f})")
        paras = removed["duplicate_paragraphs"]
        dropped = {k: v for group in removed["filtered"].values() for k, v in group.items() if v}
        out.append(f"removed when prepared: {paras['exact']} exact + {paras['near']} near duplicate paragraphs, "
                   f"{removed['duplicate_samples']} duplicate samples"
                   + (", filtered " + ", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else ""))
    if report["duplicates"]["pairs"]:
        out.append(f"duplicates: {report['duplicates']['pairs']} pair(s) within splits")
    out.append(f"leakage: {report['leakage']['pairs']} near-duplicate pair(s) across splits")
    for err in report.get("schema_errors", [])[:5]:
        out.append(f"bad line {err['file']}:{err['line']}: {err['message']}")
    for w in report["warnings"]:
        out.append(f"warning: {w}")
    for f in report["fatal"]:
        out.append(f"FATAL: {f}")
    out.append("ok" if report["ok"] else "not usable for training as it is (see FATAL above)")
    return "\n".join(out)
