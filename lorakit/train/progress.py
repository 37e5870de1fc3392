"""Training callbacks: live progress bar, metrics.jsonl, and the loss plot."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from lorakit.atomic import atomic_write



def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class ProgressBar:
    """One live line: step, loss, tokens/s, ETA and memory (a plain line per step when not a TTY)."""

    def __init__(self, total_steps: int, stream=None, enabled: bool = True, per_example: bool = False) -> None:
        """per_example: a classification run, whose labelled units are examples: examples/s and
        input tokens/s are shown."""
        self.total, self.stream, self.enabled = total_steps, stream or sys.stderr, enabled
        self.per_example = per_example
        self.started = time.perf_counter()
        self.start_step: int | None = None
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.start_step is None:
            self.start_step, self.started = step - 1, time.perf_counter() - metrics.get("step_time", 0.0)
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total - step) if done else float("nan")
        width = 24
        filled = int(width * step / max(self.total, 1))
        rate = (f"{metrics['tokens_per_s']:.1f} ex/s  {metrics['input_tokens_per_s']:.0f} tok/s" if self.per_example
                else f"{metrics['tokens_per_s']:.0f} tok/s")
        line = (f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total}  loss {metrics['loss']:.4f}  "
                f"{rate}  ETA {_clock(eta)}  mem {metrics['rss_mb']:.0f} MB")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + f"eval @ step {step}: loss {metrics['eval_loss']:.4f}  "
                              f"ppl {metrics['eval_ppl']:.2f}\n")
            self.stream.flush()


class MetricsLog:
    """Appends one JSON object per logged step or evaluation to ``metrics.jsonl``."""

    def __init__(self, path: Path, every: int = 1) -> None:
        self.path, self.every = path, max(1, every)
        path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        if step % self.every == 0:
            self._write({"step": step, **metrics})

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        self._write({"step": step, **metrics})

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed run rewrites them)."""
        if not self.path.is_file():
            return
        rows = [line for line in self.path.read_text(errors="replace").splitlines() if _step_of(line) <= step]
        atomic_write(self.path, "".join(r + "\n" for r in rows))  # a kill now leaves the old log, not half of it


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl line; a torn or foreign line (a kill mid-append) counts as past every step."""
    try:
        row = json.loads(line)
        return float(row["step"]) if isinstance(row, dict) and isinstance(row.get("step"), int) else float("inf")
    except (ValueError, RecursionError):
        return float("inf")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_loss(metrics_path: Path, out_png: Path) -> Path | None:
    """Train and eval loss against step as a PNG; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
