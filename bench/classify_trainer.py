"""Sequence classification: `lorakit train --task classify` vs PEFT + the transformers `Trainer`.

    .venv/bin/python bench/classify_trainer.py --data /tmp/cls-bal                 # MiniLM, LoRA r=8
    .venv/bin/python bench/classify_trainer.py --data DIR --model smollm2-135m-instruct --batch-size 8

The dataset comes from `lorakit data prepare --task classify` (README: the author task). Each
system runs alone in a fresh process, one after the other, as its user runs it:
- lorakit: the CLI, `lorakit train --task classify --model M --data D --rank 8 --dropout 0.05
  --epochs E` and its defaults for everything else (batch size, learning rate, precision, bucketing),
  then `lorakit eval --task classify` on test.jsonl.
- PEFT + Trainer: `get_peft_model(AutoModelForSequenceClassification, LoraConfig(task_type=SEQ_CLS,
  target_modules="all-linear", r, alpha, dropout))` trained by `Trainer` with `DataCollatorWithPadding`
  (dynamic padding), the same batch size, learning rate, schedule, warm-up, clipping and epochs
  (the rates lorakit resolved, read back from its train_config.yaml), in fp32 (the Trainer's CPU
  default) and, with `--peft-bf16`, also with ``bf16=True``; then `Trainer.predict` on test.jsonl.
Reported per system: training seconds (lorakit: its steps' summed step times; Trainer: its
``train_runtime``), training examples and input tokens per second, test accuracy and macro-F1,
trainable parameters, and the process's peak RSS (its own, from `os.wait4`). The machine's CPU
flags and GEMM peaks are printed first; the load average before and after says if it was quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_process(argv: list[str], log: Path) -> tuple[float, float]:
    """Run `argv` to completion, output to `log`; returns (wall seconds, its own peak RSS in MB)."""
    started = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{' '.join(argv[:4])} ... failed; see {log}:\n" + "\n".join(tail))
    return time.perf_counter() - started, usage.ru_maxrss / 1024  # Linux reports KiB


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def lorakit_run(args, work: Path) -> dict:
    """`lorakit train --task classify` then `lorakit eval --task classify`, as a user types them."""
    out = work / "lorakit"
    cli = [sys.executable, "-m", "lorakit"]
    train = cli + ["train", "--task", "classify", "--model", args.model, "--data", args.data, "--out", str(out),
                   "--rank", str(args.rank), "--dropout", str(args.dropout), "--epochs", str(args.epochs),
                   "--no-progress", "--eval-every", "0"]
    if args.batch_size:
        train += ["--batch-size", str(args.batch_size)]
    wall, peak = run_process(train, work / "lorakit-train.log")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time" in r]
    result_file = work / "lorakit-eval.json"
    run_process(cli + ["eval", "--task", "classify", "--adapter", str(out), "--data", args.data,
                       "--out", str(result_file)], work / "lorakit-eval.log")
    scored = json.loads(result_file.read_text())
    import yaml

    cfg = yaml.safe_load((out / "train_config.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:  # what trains is what is saved
        trainable = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    return {"system": "lorakit", "train_seconds": sum(r["step_time"] for r in steps), "wall_seconds": wall,
            "examples": summary["tokens"], "input_tokens": sum(r["input_tokens_per_s"] * r["step_time"] for r in steps),
            "peak_rss_mb": peak, "trainable": trainable, "accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"],
            "precision": summary["precision"], "settings": {k: cfg[k] for k in ("batch_size", "lr", "schedule",
                                                                              "warmup", "max_grad_norm", "weight_decay")}}


def peft_run(args, work: Path, settings: dict, bf16: bool) -> dict:
    """The Trainer baseline in a fresh process (this file with --peft-worker)."""
    name = "peft-bf16" if bf16 else "peft-fp32"
    spec = work / f"{name}.json"
    spec.write_text(json.dumps({"model": args.model, "data": args.data, "rank": args.rank, "dropout": args.dropout,
                                "epochs": args.epochs, "bf16": bf16, "out": str(work / name), **settings}))
    wall, peak = run_process([sys.executable, __file__, "--peft-worker", str(spec)], work / f"{name}.log")
    return {"system": name, "wall_seconds": wall, "peak_rss_mb": peak,
            **json.loads((work / name / "result.json").read_text())}


def peft_worker(spec_path: str) -> None:
    """Train and score with PEFT + Trainer exactly as its documentation's text-classification recipe."""
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from lorakit.models import resolve_model  # the same folder lorakit reads (an alias resolves to it)

    spec = json.loads(Path(spec_path).read_text())
    torch.manual_seed(0)
    path = str(resolve_model(spec["model"]))
    report = json.loads((Path(spec["data"]) / "report.json").read_text())
    classes = report["classes"]
    label2id = {c: i for i, c in enumerate(classes)}
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def split(name: str) -> list[dict]:
        """The split tokenized up front (as `datasets.map` would), one dict per example."""
        rows = [json.loads(x) for x in (Path(spec["data"]) / f"{name}.jsonl").read_text().splitlines() if x.strip()]
        enc = tok([r["text"] for r in rows], truncation=True, max_length=512)
        return [{**{k: v[i] for k, v in enc.items()}, "label": label2id[r["label"]]} for i, r in enumerate(rows)]

    train, test = split("train"), split("test")
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id=label2id)
    model.config.pad_token_id = tok.pad_token_id
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=spec["rank"], lora_alpha=2 * spec["rank"],
                                             lora_dropout=spec["dropout"], target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = Path(spec["out"])
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=spec["batch_size"], per_device_eval_batch_size=16,
        learning_rate=spec["lr"], num_train_epochs=spec["epochs"], lr_scheduler_type=spec["schedule"],
        warmup_steps=spec["warmup"], max_grad_norm=spec["max_grad_norm"], weight_decay=spec["weight_decay"],
        bf16=spec["bf16"], use_cpu=True, save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50,
        dataloader_drop_last=True, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
    metrics = trainer.train().metrics
    pred = trainer.predict(test)
    y, p = pred.label_ids, np.argmax(pred.predictions, axis=-1)
    f1s = []
    for k in range(len(classes)):
        tp, fp, fn = int(((p == k) & (y == k)).sum()), int(((p == k) & (y != k)).sum()), int(((p != k) & (y == k)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    n_examples = trainer.state.global_step * spec["batch_size"]
    lengths = [len(x["input_ids"]) for x in train]
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({
        "train_seconds": metrics["train_runtime"], "examples": n_examples,
        # the epoch's tokens in the share the run consumed (drop_last drops under one batch)
        "input_tokens": sum(lengths) * n_examples / len(lengths), "accuracy": float((p == y).mean()),
        "macro_f1": sum(f1s) / len(f1s), "trainable": trainable, "precision": "bf16" if spec["bf16"] else "fp32"}))


def machine_line() -> str:
    import torch

    from lorakit.runtime.machine import cpu_facts, gemm_peak_gflops

    facts = cpu_facts()
    return (f"machine: {facts.get('cpu')}, {os.cpu_count()} cores, flags {' '.join(sorted(facts.get('flags', [])))}, "
            f"GEMM fp32 {gemm_peak_gflops(torch.float32):.0f} GFLOP/s, bf16 {gemm_peak_gflops(torch.bfloat16):.0f} GFLOP/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="dataset from `lorakit data prepare --task classify`")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=None, help="both systems (default: lorakit's)")
    ap.add_argument("--peft-bf16", action="store_true", help="also run the Trainer with bf16=True")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    ap.add_argument("--peft-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peft_worker:
        return peft_worker(args.peft_worker)
    if not args.data:
        ap.error("--data is required")
    print(machine_line())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    work = Path(args.work or tempfile.mkdtemp(prefix="lorakit-classify-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ours = lorakit_run(args, work)
    rows = [ours] + [peft_run(args, work, ours["settings"], bf16) for bf16 in ([False, True] if args.peft_bf16 else [False])]
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"model {args.model}, LoRA r={args.rank} alpha={2 * args.rank} dropout {args.dropout}, {args.epochs:g} epoch(s), "
          f"settings {ours['settings']}")
    print(f"{'system':<10} {'prec':<5} {'train s':>8} {'ex/s':>7} {'tok/s':>7} {'acc %':>6} {'F1 %':>6} {'peak MB':>8} {'trainable':>10}")
    for r in rows:
        print(f"{r['system']:<10} {r['precision']:<5} {r['train_seconds']:8.1f} {r['examples'] / r['train_seconds']:7.1f} "
              f"{r['input_tokens'] / r['train_seconds']:7.0f} {100 * r['accuracy']:6.1f} {100 * r['macro_f1']:6.1f} "
              f"{r['peak_rss_mb']:8.0f} {r['trainable']:>10,}")
    for r in rows[1:]:
        speed = (ours["examples"] / ours["train_seconds"]) / (r["examples"] / r["train_seconds"])
        print(f"lorakit vs {r['system']}: {speed:.2f}x examples/s, accuracy {100 * (ours['accuracy'] - r['accuracy']):+.1f} "
              f"points, peak memory {ours['peak_rss_mb'] / r['peak_rss_mb']:.2f}x")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "peft_worker"},
                                 "machine": machine_line(), "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
