"""`lorakit compare`: full fine-tuning vs head-only vs LoRA r=4/8/16 vs DoRA r=8 vs prefix and prompt
tuning, same data and tokens.

Every method trains the same number of steps on the same batches (one token budget). With
``budget_minutes`` the step count is chosen to fit: each method's seconds per step are
measured on a short calibration run first. Each method then trains in a fresh process
(`compare_worker`) so its peak memory is its own, and is scored on the same held-out tokens
(perplexity) and on the base's own answers to everyday prompts (drift, `lorakit.eval.drift`).
Writes OUT/compare.json and OUT/compare.html.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.eval import dataset, drift, report
from lorakit.eval.perplexity import perplexity_by_book
from lorakit.train.classify_batches import refuse_classify_data
from lorakit.train.config import LR
from lorakit.train.progress import read_metrics
from lorakit.train.virtual_settings import VIRTUAL_METHODS, VIRTUAL_TOKENS

log = logging.getLogger("lorakit")


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a training method, its rank (LoRA/DoRA) or its number of virtual
    tokens (prefix/prompt), and its learning rate."""

    name: str
    method: str
    rank: int = 8
    lr: float = 2e-4
    virtual_tokens: int | None = None

    def size(self) -> dict:
        """The TrainConfig field that sizes this method: virtual_tokens or rank."""
        return {"virtual_tokens": self.virtual_tokens} if self.method in VIRTUAL_METHODS else {"rank": self.rank}


# learning rates: the usual ones for each method at this scale (full fine-tuning needs ~10x less)
METHODS: tuple[Method, ...] = (
    Method("full", "full", lr=5e-5),
    Method("head", "head", lr=1e-4),
    Method("lora-r4", "lora", rank=4),
    Method("lora-r8", "lora", rank=8),
    Method("lora-r16", "lora", rank=16),
    Method("dora-r8", "dora", rank=8),
    # at the rates `lorakit train` gives them (`train.config.LR`) and PEFT's usual 20 virtual tokens
    Method(f"prefix-n{VIRTUAL_TOKENS}", "prefix", lr=LR["lm"]["prefix"], virtual_tokens=VIRTUAL_TOKENS),
    Method(f"prompt-n{VIRTUAL_TOKENS}", "prompt", lr=LR["lm"]["prompt"], virtual_tokens=VIRTUAL_TOKENS),
)
# `--task classify` trains them all (prefix and prompt with the classifier head beside them)
CLASSIFY_METHODS = METHODS
STARTUP_SECONDS = 6.0  # a fresh Python importing torch + transformers, before any work


def train_settings(m: Method, model_spec: str | None, data_dir: str, out: Path, steps: int, batch_size: int,
                   max_seq_len: int, seed: int, threads: int | None, precision: str = "auto") -> dict:
    """TrainConfig fields for method `m` (everything but the method, its size and lr is shared)."""
    return {"model": model_spec, "data": str(data_dir), "out": str(out), "method": m.method, **m.size(),
            "lr": m.lr, "max_steps": steps, "batch_size": batch_size, "max_seq_len": max_seq_len,
            "mask_prompt": True, "warmup": min(10, max(steps // 10, 0)), "seed": seed, "progress": False,
            # held-out perplexity is measured afterwards, on test
            "threads": threads, "eval_batches": 1, "precision": precision}


def trainable_counts(model_spec: str | None, m: Method) -> tuple[int, int]:
    """(trainable parameters, base parameters) exactly as the trainer sets the model up."""
    from lorakit.models import load_model
    from lorakit.train.config import TrainConfig
    from lorakit.train.methods import prepare_model

    model, _ = load_model(model_spec, with_tokenizer=False)
    total = sum(p.numel() for p in model.parameters())
    prepare_model(model, TrainConfig(method=m.method, **m.size()))
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def seconds_per_step(m: Method, settings: dict, work: Path) -> tuple[float, float]:
    """(seconds per optimizer step, fixed seconds of load + save) from a 2-step run in this process."""
    from lorakit.train.config import TrainConfig
    from lorakit.train.run import run_training

    out = work / f"calibrate-{m.name}"
    started = time.perf_counter()
    run_training(TrainConfig(**{**settings, "out": str(out), "max_steps": 2, "warmup": 0}), replace=True)
    wall = time.perf_counter() - started
    times = [r["step_time"] for r in read_metrics(out / "metrics.jsonl") if "step_time" in r]
    shutil.rmtree(out, ignore_errors=True)
    per_step = times[-1]  # step 1 pays one-off allocations: step 2 is the steady state
    return per_step, max(wall - sum(times), 0.0)


def run_worker(spec: dict, run_dir: Path) -> dict:
    """Run one method in a fresh process; returns its measurements."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = run_dir / "spec.json", run_dir / "result.json", run_dir / "worker.log"
    spec_path.write_text(json.dumps(spec, indent=1) + "\n")
    result_path.unlink(missing_ok=True)
    with log_path.open("w") as fh:
        rc = subprocess.call([sys.executable, "-m", "lorakit.eval.compare_worker", str(spec_path), str(result_path)],
                             stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if rc != 0 or not result_path.is_file():
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        raise LorakitError(f"compare run {run_dir.name} failed ({lines[-1] if lines else f'exit {rc}'}); see {log_path}")
    return json.loads(result_path.read_text())


def run_compare(model_spec: str | None, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                budget_minutes: float | None = 10.0, steps: int | None = None, methods: tuple[Method, ...] = METHODS,
                batch_size: int = 4, max_seq_len: int = 256, max_eval_tokens: int = 1000, seed: int = 0,
                threads: int | None = None, precision: str = "auto", drift_tokens: int = 48) -> dict:
    """Train every method on the same data for the same steps; writes OUT/compare.json and compare.html.

    `precision`: every method trains in it (`lorakit train --precision`); held-out scores are fp32.
    drift_tokens: tokens of each greedy base answer to the everyday prompts scored for drift.

    steps: fixed step count; otherwise chosen so the whole comparison fits `budget_minutes`.
    Returns the comparison dict (what compare.json holds).
    """
    from lorakit.models import load_model
    from lorakit.runtime.device import set_threads

    if steps is None and not budget_minutes:
        raise LorakitError("give --budget-minutes or --steps: how long each method may train")
    started = time.perf_counter()
    out, data_dir = Path(out_dir), str(data_dir)
    refuse_classify_data(Path(data_dir))  # its rows carry no completions to score: `--task classify`
    rows = dataset.read_split(data_dir, "test")
    if not rows:
        raise LorakitError(f"{Path(data_dir) / 'test.jsonl'}: no test samples; re-run `lorakit data prepare` "
                           "with --test-fraction > 0")
    dataset.read_split(data_dir, "train")  # refuse a missing train split before any work
    set_threads(threads)
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)

    model, tok = load_model(model_spec)
    rows = dataset.test_rows(data_dir, getattr(model.config, "max_position_embeddings", None) or 2048)
    books = dataset.by_book(rows, max_eval_tokens, seed)
    t = time.perf_counter()
    base_ppl = perplexity_by_book(model, {b: [r.sample for r in rs] for b, rs in books.items()},
                                  tok.pad_token_id if tok.pad_token_id is not None else 0)
    answers = drift.base_answers(model, tok, max_new_tokens=drift_tokens)  # every method scores these
    base_drift_nll = drift.mean_nll(model, answers, tok.pad_token_id if tok.pad_token_id is not None else 0)
    eval_seconds = time.perf_counter() - t
    del model

    counts = {m.name: trainable_counts(model_spec, m) for m in methods}
    common = dict(model_spec=model_spec, data_dir=data_dir, batch_size=batch_size, max_seq_len=max_seq_len,
                  seed=seed, threads=threads, precision=precision)
    calibration: dict[str, tuple[float, float]] = {}
    if steps is None:
        for m in methods:
            calibration[m.name] = seconds_per_step(m, train_settings(m, out=work, steps=3, **common), work)
            log.info("compare: %s takes %.2f s/step", m.name, calibration[m.name][0])
        left = budget_minutes * 60 - (time.perf_counter() - started)
        fixed = sum(c[1] + 2 * eval_seconds + STARTUP_SECONDS for c in calibration.values())
        steps = math.floor((left - fixed) / sum(c[0] for c in calibration.values()))
        if steps < 1:
            raise LorakitError(f"--budget-minutes {budget_minutes:g} leaves no time to train after calibration "
                               f"({left:.0f}s left, {fixed:.0f}s of fixed costs); raise it or pass --steps")
        log.info("compare: %d steps per method (%d tokens each) fit the budget", steps, steps * batch_size * max_seq_len)

    results = []
    for i, m in enumerate(methods, 1):
        log.info("compare: training %s (%d/%d), %d steps", m.name, i, len(methods), steps)
        spec = {"train": train_settings(m, out=work / m.name, steps=steps, **common),
                "max_eval_tokens": max_eval_tokens, "seed": seed,
                "drift_answers": [[s.ids, s.prompt_len] for s in answers]}
        measured = run_worker(spec, work / m.name)
        trainable, total = counts[m.name]
        change = 100.0 * (measured["drift_nll"] - base_drift_nll) / base_drift_nll if base_drift_nll else 0.0
        results.append({"name": m.name, "method": m.method, "rank": m.rank if m.method in ("lora", "dora") else None,
                        "virtual_tokens": m.virtual_tokens, "lr": m.lr, "trainable": trainable,
                        "trainable_pct": 100.0 * trainable / total, "drift_pct": change,
                        "seconds_per_step_calibrated": calibration.get(m.name, (None,))[0], **measured})
        log.info("compare: %s ppl %.2f, drift %+.2f%%, %.0fs, peak %.0f MB", m.name,
                 measured["perplexity"]["overall"]["ppl"], change, measured["train_seconds"], measured["peak_rss_mb"])
    result = {"model": str(model_spec or "smollm2-135m-instruct"), "data": data_dir, "steps": steps,
              "batch_size": batch_size, "max_seq_len": max_seq_len, "budget_minutes": budget_minutes,
              "precision": precision, "drift_tokens": drift_tokens,
              "base": {"perplexity": base_ppl, "params": next(iter(counts.values()))[1], "drift_nll": base_drift_nll},
              "runs": results, "seconds": time.perf_counter() - started}
    report.write_json(out / "compare.json", result)
    report.write_atomic(out / "compare.html", report.page("lorakit method comparison", report.compare_section(result, work)))
    return result

