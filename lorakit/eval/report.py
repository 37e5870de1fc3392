"""report.json and a self-contained report.html (inline CSS, plots as data URIs, no links out).

Every piece of text from data or models is HTML-escaped: generations are untrusted.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lorakit.atomic import atomic_write
from lorakit.eval import plots
from lorakit.train.progress import read_metrics

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right;
vertical-align:top}th{background:#f4f4f4}td.l,th.l{text-align:left}.note{color:#666;font-size:.9em}
.sbs{display:grid;gap:.8em}.sbs div{background:#fafafa;border:1px solid #ddd;padding:.6em;white-space:pre-wrap;
font-size:.9em}.sbs h4{margin:0 0 .3em 0}img{max-width:100%}.good{color:#176b2c}.bad{color:#a11}"""


def write_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` via a temp file + rename, so readers never see half a file."""
    return atomic_write(path, text)


def write_json(path: str | Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def esc(value: Any) -> str:
    return html.escape(str(value))


def table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    """An HTML table; the first `left` columns are left-aligned labels."""
    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{esc(fmt(v))}</td>" for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(v: Any) -> str:
    """Numbers with sensible precision; everything else as text."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def image(uri: str, alt: str) -> str:
    assert uri.startswith("data:image/png;base64,"), "report images must be inline"
    return f'<p><img alt="{esc(alt)}" src="{uri}"></p>'


def page(title: str, body: list[str]) -> str:
    """A complete HTML document with the stylesheet inline."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{''.join(body)}</body></html>\n")


def loss_curve_data(run_dir: str | Path) -> dict[str, list[list[float]]] | None:
    """Train/eval loss points from a training output's metrics.jsonl (or its parent's), if any."""
    for d in (Path(run_dir), Path(run_dir).parent):
        rows = read_metrics(d / "metrics.jsonl")
        if rows:
            return {"train": [[r["step"], r["loss"]] for r in rows if "loss" in r],
                    "eval": [[r["step"], r["eval_loss"]] for r in rows if "eval_loss" in r]}
    return None


def _ppl_section(ppl: dict[str, dict]) -> list[str]:
    targets = list(ppl)
    books = list(next(iter(ppl.values()))["books"])
    base = ppl.get("base", {}).get("overall", {}).get("ppl")
    headers = ["book", "tokens", *[f"ppl {t}" for t in targets]]
    rows = [[b, ppl[targets[0]]["books"][b]["tokens"], *[ppl[t]["books"][b]["ppl"] for t in targets]] for b in books]
    rows.append(["overall", ppl[targets[0]]["overall"]["tokens"], *[ppl[t]["overall"]["ppl"] for t in targets]])
    out = ["<h2>Perplexity on the test split</h2>",
           '<p class="note">Completion tokens of held-out books only (prompts are not scored). Lower is better.</p>',
           table(headers, rows)]
    if base:
        changes = [f"{t}: {100 * (ppl[t]['overall']['ppl'] - base) / base:+.1f}%" for t in targets if t != "base"]
        if changes:
            out.append(f"<p>Overall change vs base: {esc('; '.join(changes))}</p>")
    series = {t: [ppl[t]["books"][b]["ppl"] for b in books] + [ppl[t]["overall"]["ppl"]] for t in targets}
    out.append(image(plots.grouped_bars(books + ["overall"], series, "perplexity", "test perplexity by book"),
                     "perplexity by book"))
    return out


def _style_section(st: dict) -> list[str]:
    parts = ["distance", "sentence_length", "function_words", "punctuation", "scalars"]
    rows = [[t, *[v[p] for p in parts], v["profile"]["words"]] for t, v in st["targets"].items()]
    rows.append(["held-out passages (reference)", *[st["reference"][p] for p in parts], st["reference"]["profile"]["words"]])
    labels = list(st["targets"]) + ["reference"]
    values = [v["distance"] for v in st["targets"].values()] + [st["reference"]["distance"]]
    return ["<h2>Style: distance to the training corpus</h2>",
            '<p class="note">Stylometric profile of the generations (sentence lengths, function-word and punctuation '
            "rates, word length, type-token ratio, dialogue) compared with the training completions; 0 = identical "
            "profile, 1 = nothing shared. The reference row is real held-out text by the same authors.</p>",
            table(["model", *parts, "words"], rows),
            image(plots.bars(labels, values, "distance (lower = closer)", "style distance to corpus"), "style distance")]


def _drift_section(dr: dict) -> list[str]:
    rows = [[t, dr["nll"][t], "" if t == "base" else f"{dr['change_pct'][t]:+.2f}%"] for t in dr["nll"]]
    out = ["<h2>Drift on everyday prompts</h2>",
           f'<p class="note">NLL per token of the base model\'s own greedy answers to {len(dr["prompts"])} general '
           f"requests ({dr['answer_tokens']} answer tokens). A large increase means the adapter forgot general "
           "behaviour.</p>", table(["model", "NLL", "change vs base"], rows)]
    if dr["change_pct"]:
        out.append(image(plots.bars(list(dr["change_pct"]), list(dr["change_pct"].values()), "NLL change (%)",
                                    "drift vs base"), "drift"))
    return out


def _samples_section(samples: list[dict]) -> list[str]:
    out = ["<h2>Samples side by side</h2>",
           '<p class="note">Held-out prompts; every model sampled with the same seed.</p>']
    for s in samples:
        cols = [("reference (real passage)", s["reference"]), *s["outputs"].items()]
        cells = "".join(f"<div><h4>{esc(name)}</h4>{esc(text)}</div>" for name, text in cols)
        out.append(f"<h3>{esc(s['task'])} — {esc(s['book'])}</h3><p><b>Prompt:</b> {esc(s['prompt'])}</p>"
                   f'<div class="sbs" style="grid-template-columns:repeat({len(cols)},1fr)">{cells}</div>')
    return out


def compare_section(result: dict, runs_dir: Path | None = None) -> list[str]:
    """HTML parts: the comparison table, bar charts and (if the run folders exist) loss curves."""
    base = result["base"]["perplexity"]["overall"]["ppl"]
    headers = ["method", "trainable params", "trainable %", "held-out ppl", "ppl vs base", "drift", "train wall s",
               "peak RSS MB", "saved MB", "tokens"]
    rows = [["base (no training)", 0, 0.0, base, "", "", "", "", "", ""]]
    for r in result["runs"]:
        ppl = r["perplexity"]["overall"]["ppl"]
        drift = f"{r['drift_pct']:+.1f}%" if "drift_pct" in r else ""  # compare.json written before drift
        rows.append([r["name"], r["trainable"], r["trainable_pct"], ppl, f"{100 * (ppl - base) / base:+.1f}%", drift,
                     r["train_seconds"], r["peak_rss_mb"], r["saved_bytes"] / 2**20, r["tokens"]])
    names = [r["name"] for r in result["runs"]]
    figs = [
        plots.bars(["base", *names], [base, *[r["perplexity"]["overall"]["ppl"] for r in result["runs"]]],
                   "perplexity", "held-out perplexity (lower is better)"),
        plots.bars(names, [r["train_seconds"] for r in result["runs"]], "seconds", "training wall time"),
        plots.bars(names, [r["peak_rss_mb"] for r in result["runs"]], "MiB", "peak memory (RSS)"),
        plots.bars(names, [max(r["trainable"], 1) for r in result["runs"]], "parameters", "trainable parameters",
                   log=True),
    ]
    parts = ["<h2>Method comparison</h2>",
             f'<p class="note">Same data, same {result["steps"]} steps of batch {result["batch_size"]} x '
             f'{result["max_seq_len"]} tokens for every method; each trained in a fresh process '
             "(peak RSS is that process's). Drift: the change in mean NLL of the base model's own greedy answers "
             "to everyday prompts (lower is closer to the base).</p>", table(headers, rows),
             *[image(f, "comparison chart") for f in figs]]
    if runs_dir is not None:
        curves = {n: loss_curve_data(runs_dir / n) for n in names}
        curves = {k: v for k, v in curves.items() if v}
        if curves:
            parts.append(image(plots.loss_curves(curves), "loss curves"))
    return parts


def eval_html(report: dict) -> str:
    """The full eval report page."""
    body = [f'<p class="note">model {esc(report["model"])} · data {esc(report["data"])} · '
            f"adapters: {esc(', '.join(f'{k} = {v}' for k, v in report['adapters'].items()) or 'none')}</p>"]
    curves = {k: v for k, v in report.get("training", {}).items() if v}
    if curves:
        body += ["<h2>Training</h2>", image(plots.loss_curves(curves), "loss curve")]
    if report.get("perplexity"):
        body += _ppl_section(report["perplexity"])
    if report.get("style"):
        body += _style_section(report["style"])
    if report.get("drift"):
        body += _drift_section(report["drift"])
    if report.get("samples"):
        body += _samples_section(report["samples"])
    if report.get("compare"):
        body += compare_section(report["compare"])
    timing = report.get("seconds", {})
    body.append(f'<p class="note">time: {esc(", ".join(f"{k} {v:.1f}s" for k, v in timing.items()))}</p>')
    return page("lorakit evaluation report", body)
