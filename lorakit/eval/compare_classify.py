"""`lorakit compare --task classify`: full vs head vs LoRA r=4/8/16 vs DoRA r=8 as sequence classifiers.

Every method trains on the same classification dataset (`lorakit data prepare --task classify`)
for the same number of epochs (default one; or the same --steps, or as many steps as fit
--budget-minutes), with the same batch size and seed, so every method sees the same examples. Each
takes the learning rate `lorakit train --task classify` gives its method unless one --lr is given
for all. Each trains in a fresh process (`compare_worker`, so its peak RSS is its own) and is
then scored on every example of test.jsonl by `run_classify_eval`: accuracy, macro-F1, accuracy
per class and the confusion matrix. Writes OUT/compare.json and OUT/compare.html.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.eval import report
from lorakit.eval.classify import run_classify_eval
from lorakit.eval.compare import CLASSIFY_METHODS, STARTUP_SECONDS, Method, run_worker, seconds_per_step
from lorakit.eval.report_classify import classify_page
from lorakit.models import DEFAULT_MODEL
from lorakit.train.classify_batches import read_report
from lorakit.train.config import DEFAULT_LR, LR, TrainConfig

log = logging.getLogger("lorakit")
TASK = "classify"
PREPARE = "`lorakit data prepare --task classify`"


def method_lr(method: str, lr: float | None = None) -> float:
    """`lr` if given, else the rate `lorakit train --task classify` takes for `method`."""
    return lr if lr is not None else LR[TASK].get(method, DEFAULT_LR[TASK])


def trainable_counts(model_spec: str | None, classes: list[str], m: Method) -> tuple[int, int]:
    """(trainable parameters, parameters of the base classifier), set up as the trainer does it:
    `load_classifier` with the dataset's classes, then `prepare_model` for the method (the base's
    count is taken first: a LoRA layer or a head copy adds parameters)."""
    from lorakit.classifier import load_classifier
    from lorakit.train.methods import prepare_model

    model, _ = load_classifier(model_spec, classes, with_tokenizer=False)
    total = sum(p.numel() for p in model.parameters())
    prepare_model(model, TrainConfig(task=TASK, method=m.method, **m.size()))
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def heldout_scores(spec: dict, out: Path) -> dict:
    """`run_classify_eval` of a finished run on test.jsonl: a full/head run's folder is a model of its
    own, a lora/dora/prefix/prompt run's is a SEQ_CLS adapter on the base. Always fp32, as the held-out LM scores."""
    train = spec["train"]
    own_model = train["method"] in ("full", "head")
    return run_classify_eval(str(out) if own_model else train["model"], None if own_model else out, train["data"],
                             **eval_settings(train))


def eval_settings(train: dict) -> dict:
    """The keyword arguments of `run_classify_eval` every run is scored with (compare.json keeps them)."""
    return {"split": "test", "batch_size": train["batch_size"], "max_seq_len": train["max_seq_len"],
            "threads": train["threads"], "precision": "fp32"}


def train_settings(m: Method, *, model_spec: str | None, data_dir: str, out: Path, steps: int | None,
                   epochs: float, planned: int, batch_size: int, max_seq_len: int, seed: int,
                   threads: int | None, precision: str, lr: float | None) -> dict:
    """TrainConfig fields for method `m` (everything but the method, rank and lr is shared).
    `steps` None: `epochs` passes over train.jsonl, `planned` steps."""
    return {"task": TASK, "model": model_spec, "data": data_dir, "out": str(out), "method": m.method,
            **m.size(), "lr": method_lr(m.method, lr), "max_steps": steps, "epochs": epochs,
            "batch_size": batch_size, "max_seq_len": max_seq_len, "warmup": min(10, planned // 10), "seed": seed,
            # one valid batch at the end: the scores that count are on test, afterwards
            "progress": False, "threads": threads, "eval_batches": 1, "precision": precision}


def _count_rows(path: Path, what: str) -> int:
    """Non-blank lines of a split; refuses a missing or empty one, naming it."""
    if not path.is_file():
        raise LorakitError(f"{path}: not found; re-run {PREPARE} (it writes {path.name})")
    with path.open("rb") as fh:
        n = sum(1 for line in fh if line.strip())
    if not n:
        raise LorakitError(f"{path}: no {what} examples; re-run {PREPARE}"
                           f"{' with --test-fraction > 0' if what == 'test' else ''}")
    return n


def _test_pass_seconds(model_spec: str | None, data_dir: str, classes: list[str], batch_size: int,
                       max_seq_len: int) -> float:
    """Seconds one forward pass over test.jsonl takes on the base classifier: what scoring each run costs."""
    from lorakit.classifier import load_classifier
    from lorakit.train.classify import predict
    from lorakit.train.classify_batches import fixed_batches, load_examples, max_length

    model, tok = load_classifier(model_spec, classes)
    examples, _ = load_examples(Path(data_dir) / "test.jsonl", read_report(data_dir), tok, max_length(tok, max_seq_len))
    started = time.perf_counter()
    predict(model, fixed_batches(examples, batch_size, int(model.config.pad_token_id)))
    return time.perf_counter() - started


def _fit_budget(methods, settings_of, work: Path, budget_minutes: float, started: float, eval_seconds: float) -> int:
    """Steps per method that fit the budget, from a 2-step calibration run of each method."""
    calibration = {}
    for m in methods:
        calibration[m.name] = seconds_per_step(m, settings_of(m, work), work)
        log.info("compare: %s takes %.2f s/step", m.name, calibration[m.name][0])
    left = budget_minutes * 60 - (time.perf_counter() - started)
    fixed = sum(c[1] + eval_seconds + STARTUP_SECONDS for c in calibration.values())
    steps = math.floor((left - fixed) / sum(c[0] for c in calibration.values()))
    if steps < 1:
        raise LorakitError(f"--budget-minutes {budget_minutes:g} leaves no time to train after calibration "
                           f"({left:.0f}s left, {fixed:.0f}s of fixed costs); raise it or pass --epochs or --steps")
    return steps


def run_compare_classify(model_spec: str | None, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                         epochs: float | None = None, steps: int | None = None, budget_minutes: float | None = None,
                         methods: tuple[Method, ...] = CLASSIFY_METHODS, lr: float | None = None,
                         batch_size: int | None = None, max_seq_len: int | None = None, seed: int = 0,
                         threads: int | None = None, precision: str = "auto") -> dict:
    """Train every method as a classifier for the same epochs (or steps), score each on test.jsonl;
    writes OUT/compare.json and OUT/compare.html and returns what compare.json holds.

    At most one of `epochs`, `steps` and `budget_minutes` (none: one epoch). `lr`: one rate for
    every method (default: each method's own). `batch_size`, `max_seq_len`: train's defaults for
    --task classify when None. Bad input is refused before anything is written."""
    from lorakit.runtime.device import set_threads

    if sum(x is not None for x in (epochs, steps, budget_minutes)) > 1:
        raise LorakitError("give one of --epochs, --steps or --budget-minutes: how long each method trains")
    started = time.perf_counter()
    out, data_dir = Path(out_dir), str(data_dir)
    classes = read_report(data_dir).classes  # an LM dataset is refused here, before anything loads
    defaults = TrainConfig(task=TASK)
    batch_size, max_seq_len = batch_size or defaults.batch_size, max_seq_len or defaults.max_seq_len
    epochs = epochs if epochs is not None else defaults.epochs  # unused where steps are given or fitted
    n_train = _count_rows(Path(data_dir) / "train.jsonl", "training")
    n_test = _count_rows(Path(data_dir) / "test.jsonl", "test")
    if n_train < batch_size:
        raise LorakitError(f"{Path(data_dir) / 'train.jsonl'}: {n_train} examples cannot fill one batch of "
                           f"--batch-size {batch_size}; lower --batch-size")
    set_threads(threads)
    counts = {m.name: trainable_counts(model_spec, classes, m) for m in methods}

    common = dict(model_spec=model_spec, data_dir=data_dir, batch_size=batch_size, max_seq_len=max_seq_len,
                  seed=seed, threads=threads, precision=precision, lr=lr, epochs=epochs)
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    if budget_minutes is not None:
        eval_seconds = _test_pass_seconds(model_spec, data_dir, classes, batch_size, max_seq_len)
        steps = _fit_budget(methods, lambda m, w: train_settings(m, out=w, steps=3, planned=3, **common), work,
                            budget_minutes, started, eval_seconds)
        log.info("compare: %d steps per method fit the budget", steps)
    # the trainer's own count for --epochs: whole batches per epoch (`ClassifyBatches.per_epoch`)
    planned = steps or max(1, math.ceil(epochs * (n_train // batch_size)))

    rows = []
    for i, m in enumerate(methods, 1):
        log.info("compare: training %s (%d/%d), %d steps", m.name, i, len(methods), planned)
        spec = {"train": train_settings(m, out=work / m.name, steps=steps, planned=planned, **common)}
        measured = run_worker(spec, work / m.name)
        scores = measured.pop("scores")
        trainable, total = counts[m.name]
        rows.append({"name": m.name, "method": m.method, "rank": m.rank if m.method in ("lora", "dora") else None,
                     "lr": spec["train"]["lr"], "trainable": trainable, "trainable_pct": 100.0 * trainable / total,
                     "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "eval_loss": scores["eval_loss"],
                     "per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"],
                     "test_examples": scores["examples"], **measured})
        log.info("compare: %s accuracy %.4f, macro-F1 %.4f, %.0fs, peak %.0f MB", m.name, scores["accuracy"],
                 scores["macro_f1"], measured["train_seconds"], measured["peak_rss_mb"])
    result = {"task": TASK, "model": str(model_spec or DEFAULT_MODEL), "data": data_dir, "classes": classes,
              "train_examples": n_train, "test_examples": n_test, "epochs": None if steps else epochs,
              "steps": planned, "batch_size": batch_size, "max_seq_len": max_seq_len,
              "budget_minutes": budget_minutes, "precision": precision, "lr": lr,
              "eval": eval_settings({"batch_size": batch_size, "max_seq_len": max_seq_len, "threads": threads}),
              "base": {"params": next(iter(counts.values()))[1]}, "runs": rows,
              "seconds": time.perf_counter() - started}
    report.write_json(out / "compare.json", result)
    report.write_atomic(out / "compare.html", classify_page(result, work))
    return result


def format_table(result: dict) -> str:
    """The comparison as the CLI prints it: a header and one line per method."""
    lines = [f"{'method':>10}  {'lr':>7}  {'trainable':>12}  {'%':>7}  {'accuracy':>8}  {'macro-F1':>8}  "
             f"{'wall s':>7}  {'peak MB':>8}  {'size MB':>8}"]
    for r in result["runs"]:
        lines.append(f"{r['name']:>10}  {r['lr']:>7.0e}  {r['trainable']:>12,}  {r['trainable_pct']:>7.3f}  "
                     f"{r['accuracy']:>8.4f}  {r['macro_f1']:>8.4f}  {r['train_seconds']:>7.0f}  "
                     f"{r['peak_rss_mb']:>8.0f}  {r['saved_bytes'] / 2**20:>8.1f}")
    return "\n".join(lines)
