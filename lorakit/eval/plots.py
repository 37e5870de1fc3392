"""Report figures as inline PNG data URIs (matplotlib, headless), so report.html has no external files."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def to_data_uri(fig) -> str:
    """Render `fig` as ``data:image/png;base64,...`` and close it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def grouped_bars(groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> str:
    """One cluster of bars per group, one bar per series (e.g. books x targets)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) * max(1, len(series)) ** 0.5 + 2), 3.6))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(x, [g if len(g) <= 22 else g[:20] + "…" for g in groups], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return to_data_uri(fig)


def bars(labels: list[str], values: list[float], ylabel: str, title: str, log: bool = False) -> str:
    """A simple bar chart with value labels."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.4))
    b = ax.bar(range(len(labels)), values, width=0.6, color=plt.cm.tab10(np.arange(len(labels)) % 10))
    ax.bar_label(b, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(fig)


def loss_curves(curves: dict[str, dict[str, list[list[float]]]], ylabel: str = "loss (nats/token)") -> str:
    """Train (line) and eval (dots) loss per run: ``{run: {"train": [(step, loss)], "eval": [...]}}``."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, (name, c) in enumerate(curves.items()):
        color = plt.cm.tab10(k % 10)
        if c.get("train"):
            ax.plot(*zip(*c["train"]), lw=1.1, color=color, label=f"{name} train")
        if c.get("eval"):
            ax.plot(*zip(*c["eval"]), "o--", lw=1.2, color=color, label=f"{name} eval")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title("training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_data_uri(fig)
