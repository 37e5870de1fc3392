"""The `lorakit compare --task classify` page: the table, bar charts, per-class accuracy and a
confusion matrix per method, self-contained (inline CSS and PNG data URIs, every label escaped)."""

from __future__ import annotations

from pathlib import Path

from lorakit.eval import plots
from lorakit.eval.report import esc, fmt, image, loss_curve_data, page, table

# cell shading: the share of the true class's examples in a cell, as the alpha of one blue
SHADE = "31,119,180"


def confusion_table(name: str, classes: list[str], matrix: list[list[int]]) -> str:
    """One method's confusion matrix as an HTML table (rows: true class, columns: predicted), each
    cell shaded by its share of the row; the cells carry ``class="cm"`` and the table the method."""
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    body = []
    for true, row in zip(classes, matrix):
        total = sum(row) or 1
        cells = []
        for n in row:
            share = n / total
            color = "#fff" if share > 0.6 else "#222"  # white text on the darkest cells stays readable
            cells.append(f'<td class="cm" style="background:rgba({SHADE},{share:.3f});color:{color}">{n}</td>')
        body.append(f'<tr><th class="l">{esc(true)}</th>{"".join(cells)}</tr>')
    return (f'<div><h4>{esc(name)}</h4><table data-method="{esc(name)}"><tr><th class="l">true \\ predicted</th>'
            f'{head}</tr>{"".join(body)}</table></div>')


def _per_class_table(result: dict) -> str:
    """Accuracy per class (the share of its test examples given that class), one column per method."""
    runs = result["runs"]
    rows = []
    for k, name in enumerate(result["classes"]):
        accs = [r["per_class"][k]["accuracy"] for r in runs]
        rows.append([name, runs[0]["per_class"][k]["examples"], *["" if a is None else a for a in accs]])
    return table(["class", "test examples", *[f"acc {r['name']}" for r in runs]], rows)


def classify_section(result: dict, runs_dir: Path | None = None) -> list[str]:
    """HTML parts: the comparison table, bar charts, per-class accuracy, confusion matrices and (if
    the run folders exist) the training-loss curves."""
    runs = result["runs"]
    names = [r["name"] for r in runs]
    headers = ["method", "rank", "lr", "trainable params", "trainable %", "accuracy", "macro-F1", "train wall s",
               "peak RSS MB", "saved MB", "steps"]
    rows = [[r["name"], r["rank"], f"{r['lr']:.0e}", r["trainable"], r["trainable_pct"], r["accuracy"],
             r["macro_f1"], r["train_seconds"], r["peak_rss_mb"], r["saved_bytes"] / 2**20, r["steps"]] for r in runs]
    how_long = (f"{fmt(result['epochs'])} epoch(s) = {result['steps']} steps" if result.get("epochs")
                else f"{result['steps']} steps")
    figs = [
        plots.bars(names, [r["accuracy"] for r in runs], "accuracy", "test accuracy (higher is better)"),
        plots.bars(names, [r["macro_f1"] for r in runs], "macro-F1", "test macro-F1 (higher is better)"),
        plots.bars(names, [r["train_seconds"] for r in runs], "seconds", "training wall time"),
        plots.bars(names, [max(r["trainable"], 1) for r in runs], "parameters", "trainable parameters", log=True),
        plots.bars(names, [r["peak_rss_mb"] for r in runs], "MiB", "peak memory (RSS)"),
    ]
    parts = ["<h2>Method comparison: classification</h2>",
             f'<p class="note">model {esc(result["model"])} · data {esc(result["data"])} · '
             f'{len(result["classes"])} classes · {result["train_examples"]} training and '
             f'{result["test_examples"]} test examples.</p>',
             f'<p class="note">Same data, same {esc(how_long)} of batch {result["batch_size"]} for every method '
             f"(examples up to {result['max_seq_len']} tokens); each at its own learning rate unless one was given, "
             "each trained in a fresh process (peak RSS is that process's). Accuracy and macro-F1 are on every "
             "example of test.jsonl. Trainable % is of the base classifier's parameters; saved MB is the adapter "
             "file, or a full/head run's whole model.</p>",
             table(headers, rows), *[image(f, "comparison chart") for f in figs],
             "<h3>Accuracy per class</h3>", _per_class_table(result),
             "<h3>Confusion matrices</h3>",
             '<p class="note">Rows: the true class; columns: the predicted one; counts of test examples, each cell '
             "shaded by its share of the row.</p>",
             '<div class="sbs" style="grid-template-columns:repeat(auto-fill,minmax(320px,1fr))">'
             + "".join(confusion_table(r["name"], result["classes"], r["confusion_matrix"]) for r in runs) + "</div>"]
    if runs_dir is not None:
        curves = {k: v for k, v in ((n, loss_curve_data(runs_dir / n)) for n in names) if v}
        if curves:
            parts.append(image(plots.loss_curves(curves, ylabel="loss (nats/example)"), "loss curves"))
    return parts


def classify_page(result: dict, runs_dir: Path | None = None) -> str:
    """The complete compare.html of a classification comparison."""
    return page("lorakit method comparison (classification)", classify_section(result, runs_dir))
