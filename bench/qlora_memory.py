"""Peak memory and step time of LoRA training: lorakit fp32 LoRA, lorakit QLoRA (NF4), full, and PEFT.

Each configuration runs in a fresh subprocess so its peak RSS (VmHWM, `peak_rss_mb`) is its own.

    # once: a random-init 1.5B Qwen2 checkpoint (the QLoRA run loads it through load_quantized)
    .venv/bin/python bench/qlora_memory.py make-checkpoint
    # one configuration (prints one JSON line)
    .venv/bin/python bench/qlora_memory.py run --model qwen2-1.5b --method qlora --steps 3
    # every configuration of bench/RESULTS_quant.md, one subprocess each, JSON lines appended to --out
    .venv/bin/python bench/qlora_memory.py all --out bench/qlora_memory.jsonl [--lean-malloc]
    # `lorakit train` itself, as a user runs it (the issue-18 measurement): one subprocess per run,
    # its peak RSS (VmHWM), the plan it printed, its step times and loss
    .venv/bin/python bench/qlora_memory.py cli --data /tmp/gut --runs qlora:auto,lora:fp32 --seq 128,256,512

Models: ``qwen2-1.5b`` is the issue's configuration (hidden 1536, 28 layers, intermediate 8960,
12/2 heads, vocab 151936, untied; 1.78 B parameters), random init from config for fp32 runs and
read from the checkpoint above for QLoRA; ``smollm2-135m-instruct`` is the real model.
The training step is a minimal AdamW loop made of the trainer's parts (`lorakit train`): the
trainer's chunked cross entropy (<= 1024 tokens of logits at a time, gradient formed in the
forward), and with --lean-malloc what --lean-memory and --release-memory do (lean layers when not
checkpointing, fused frozen projections, weights out of the file mapping; freed memory returned at
once, heap trimmed after each step). --release-memory was the trainer's default when these were
measured; it is opt-in since 2026-11-29 (it costs training speed, bench/RESULTS.md). PEFT runs
the usual way (``model(input_ids, labels=...)``, transformers' own loss).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorakit.runtime.memory import peak_rss_mb  # noqa: E402

CKPT = Path(os.environ.get("LORAKIT_BENCH_CKPT", "/tmp/lorakit-bench/qwen2-1.5b-random"))


def qwen2_15b_config(layers: int = 28):
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=1536, num_hidden_layers=layers, intermediate_size=8960, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False,
                       max_position_embeddings=4096)


def peak_rss_bytes() -> int:
    return int(peak_rss_mb() * 2**20)


def build(model_name: str, method: str, rank: int, layers: int = 0):
    from transformers import AutoModelForCausalLM

    from lorakit.adapters import LoraConfig, add_adapter
    from lorakit.models import load_model
    from lorakit.quant import load_quantized, quantize_model

    if method == "qlora" and not layers:
        spec = CKPT if model_name == "qwen2-1.5b" else model_name
        model, _ = load_quantized(spec, "nf4")
    elif model_name == "qwen2-1.5b":  # --layers N: same widths, N blocks (speed runs; qlora quantized in memory)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(qwen2_15b_config(layers or 28), dtype=torch.float32)
        if method == "qlora":
            quantize_model(model, "nf4")
    else:
        model, _ = load_model(model_name, with_tokenizer=False)
    if method in ("lora", "qlora"):
        add_adapter(model, LoraConfig(r=rank, alpha=2 * rank, target_modules="all-linear"))
    elif method == "peft":
        from peft import LoraConfig as PeftConfig, get_peft_model

        model = get_peft_model(model, PeftConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    return model


def prepare(model, method: str, args: argparse.Namespace):
    """Checkpointing and the trainer's --lean-memory / --release-memory parts, as `lorakit train` sets them up; returns
    ``step(ids) -> loss`` (one AdamW step)."""
    from lorakit.runtime.memory import release_free_heap
    from lorakit.plan.speed import resolve_speed
    from lorakit.train.speed import apply_speed_plan
    from lorakit.train.loss import shift_labels
    from lorakit.train.objective import causal_lm_loss

    if args.grad_checkpoint:
        inner = model.get_base_model() if method == "peft" else model
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method != "peft" and args.lean_malloc:  # what `lorakit train --release-memory` does
        apply_speed_plan(model, resolve_speed(model_type=model.config.model_type, method="qlora",
                                              device=torch.device("cpu"), grad_checkpoint=args.grad_checkpoint,
                                              release_memory=True))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(ids: torch.Tensor) -> torch.Tensor:
        if method == "peft":
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        else:  # the trainer's loss: chunked CE, gradient formed in the forward
            total, n = causal_lm_loss(model, {"input_ids": ids, "labels": shift_labels(ids)}, args.loss_chunk)
            loss = total / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if method != "peft" and args.lean_malloc:
            release_free_heap()
        return loss.detach()

    return step


def run(args: argparse.Namespace) -> dict:
    from lorakit.runtime.memory import lean_malloc

    if args.lean_malloc:
        lean_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = build(args.model, args.method, args.rank, args.layers)
    load_s = time.perf_counter() - t0
    rss_loaded = psutil.Process().memory_info().rss
    step = prepare(model, args.method, args)
    params = [p for p in model.parameters() if p.requires_grad]
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
        t = time.perf_counter()
        loss = step(ids)
        times.append(time.perf_counter() - t)
    return {
        "model": args.model + (f"[{args.layers} layers]" if args.layers else ""), "method": args.method, "batch": args.batch, "seq": args.seq, "rank": args.rank,
        "grad_checkpoint": args.grad_checkpoint, "lean_malloc": args.lean_malloc, "loss_chunk": args.loss_chunk, "steps": args.steps, "load_s": round(load_s, 1),
        "step_s": [round(x, 2) for x in times], "rss_after_load_gb": round(rss_loaded / 1e9, 3),
        "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3), "trainable": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2), "loss": round(loss.item(), 4),
    }


def speed(args: argparse.Namespace) -> dict:
    """QLoRA vs fp32 LoRA step time, both models in one process taking turns step by step, so
    background load hits both alike (the median step of each is compared)."""
    from lorakit.runtime.memory import lean_malloc

    lean_malloc()
    steps = {}
    for method in ("lora", "qlora"):
        model = build(args.model, method, args.rank, args.layers)
        steps[method] = prepare(model, method, args)
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {m: [] for m in steps}
    for i in range(args.steps):
        ids = torch.randint(0, 151936 if args.model == "qwen2-1.5b" else 49152, (args.batch, args.seq), generator=g)
        for method, step in steps.items():
            t = time.perf_counter()
            step(ids)
            times[method].append(time.perf_counter() - t)
        print(f"step {i + 1}: " + "  ".join(f"{m} {v[-1]:.1f} s" for m, v in times.items()), file=sys.stderr, flush=True)
    med = {m: statistics.median(v[1:] or v) for m, v in times.items()}  # the first step warms up
    return {"model": args.model + (f"[{args.layers} layers]" if args.layers else ""), "batch": args.batch,
            "seq": args.seq, "rank": args.rank, "grad_checkpoint": args.grad_checkpoint,
            "step_s": {m: [round(x, 2) for x in v] for m, v in times.items()},
            "median_step_s": {m: round(v, 2) for m, v in med.items()}, "qlora_over_lora": round(med["qlora"] / med["lora"], 3),
            "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2),
            "peak_rss_gb_both": round(peak_rss_bytes() / 1e9, 3)}


def make_checkpoint(out: Path) -> None:
    """Random-init 1.5B Qwen2 saved as sharded safetensors (fp32; its size is in bench/RESULTS_quant.md)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_15b_config(), dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size="2GB")
    print(f"wrote {out}")


CONFIGS = [  # (model, method, steps); full on 1.5B does not fit this machine's RAM: predicted only
    ("smollm2-135m-instruct", "full", 3), ("smollm2-135m-instruct", "lora", 3), ("smollm2-135m-instruct", "qlora", 3),
    ("qwen2-1.5b", "qlora", 3), ("qwen2-1.5b", "lora", 3), ("qwen2-1.5b", "peft", 2),
]


# the child runs the lorakit CLI's own entry point, then reports its peak resident memory
CLI_CHILD = ("import sys\nfrom lorakit.cli import main\nrc = main(sys.argv[1:])\n"
             "from lorakit.runtime.memory import peak_rss_mb\nprint('PEAK_MB', peak_rss_mb())\nsys.exit(rc)")


def cli_run(model: str, method: str, precision: str, seq: int, args: argparse.Namespace) -> dict:
    """One `lorakit train` run in a fresh process: peak RSS, planned peak, step times and losses."""
    import re
    import shutil
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="lorakit-cli-bench-")) / "run"
    cmd = ["train", "--model", model, "--method", method, "--data", str(args.data), "--out", str(out),
           "--batch-size", str(args.batch), "--max-seq-len", str(seq), "--max-steps", str(args.steps),
           "--eval-batches", "1", "--no-progress", *(["--precision", precision] if precision != "auto" else []),
           *args.extra]
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CLI_CHILD, *cmd], capture_output=True, text=True, cwd=ROOT)
    row = {"cmd": "lorakit " + " ".join(cmd), "method": method, "precision": precision, "seq": seq,
           "wall_s": round(time.perf_counter() - start, 1), "returncode": res.returncode}
    peak = re.search(r"PEAK_MB ([0-9.]+)", res.stdout)
    plan = re.search(r"^total\s+([0-9.]+)", res.stderr + res.stdout, re.M)
    row["peak_rss_gb"] = round(float(peak.group(1)) * 2**20 / 1e9, 3) if peak else None
    row["plan_gb"] = float(plan.group(1)) if plan else None
    metrics = out / "metrics.jsonl"
    steps = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    train = [m for m in steps if "loss" in m]
    row["step_s"] = [round(m["step_time"], 2) for m in train]
    row["median_step_s_after_first"] = round(statistics.median(row["step_s"][1:]), 2) if len(train) > 1 else None
    row["loss"] = [round(m["loss"], 5) for m in train]
    row["eval_loss"] = next((m["eval_loss"] for m in steps if "eval_loss" in m), None)
    summary = out / "summary.json"
    if summary.is_file():
        row["speed_plan"] = json.loads(summary.read_text())["speed_plan"]
    if res.returncode:
        row["error"] = res.stderr.strip().splitlines()[-1:]
    shutil.rmtree(out.parent, ignore_errors=True)
    return row


def cli_bench(args: argparse.Namespace) -> None:
    """`lorakit train` for each --runs entry and --seq length, after the machine's facts."""
    from lorakit.runtime.machine import cpu_facts, gemm_peak_gflops

    facts = {**cpu_facts(), "gemm_fp32_gflops": round(gemm_peak_gflops(torch.float32), 1),
             "gemm_bf16_gflops": round(gemm_peak_gflops(torch.bfloat16), 1)}
    print(json.dumps({"machine": facts}), flush=True)
    for spec in args.runs.split(","):
        method, _, precision = spec.partition(":")
        for seq in (int(s) for s in args.seq.split(",")):
            row = cli_run(args.model, method, precision or "auto", seq, args)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**row, "machine": facts}) + "\n")


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-checkpoint")
    mk.add_argument("--out", type=Path, default=CKPT)
    r = sub.add_parser("run")
    sp = sub.add_parser("speed", help="qlora vs fp32 lora step time, taking turns in one process")
    for q in (r, sub.add_parser("all"), sp):
        q.add_argument("--batch", type=int, default=1)
        q.add_argument("--seq", type=int, default=512)
        q.add_argument("--rank", type=int, default=16)
        q.add_argument("--no-grad-checkpoint", dest="grad_checkpoint", action="store_false")
        q.add_argument("--lean-malloc", action="store_true",
                       help="as `lorakit train --lean-memory` (its default): lean_malloc, lean layers without "
                            "checkpointing, fused projections, weights out of the file mapping, heap trim (not for peft)")
        q.add_argument("--loss-chunk", type=int, default=1024, help="tokens of logits at a time in the loss")
    for q in (r, sp):
        q.add_argument("--model", default="qwen2-1.5b")
        q.add_argument("--layers", type=int, default=0, help="qwen2-1.5b with this many blocks (speed comparisons)")
    sp.add_argument("--steps", type=int, default=4)
    r.add_argument("--method", choices=["full", "lora", "qlora", "peft"], default="qlora")
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    sub.choices["all"].add_argument("--out", type=Path, default=ROOT / "bench" / "qlora_memory.jsonl")
    c = sub.add_parser("cli", help="`lorakit train` itself, one subprocess per run")
    c.add_argument("--data", type=Path, required=True, help="a `lorakit data prepare` folder")
    c.add_argument("--model", default=str(CKPT), help="what --model gets (default: the 1.5B checkpoint)")
    c.add_argument("--runs", default="qlora:auto", help="method:precision,... (precision auto: no flag)")
    c.add_argument("--seq", default="512", help="--max-seq-len values, comma-separated")
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--steps", type=int, default=4)
    c.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    c.add_argument("extra", nargs="*", help="further `lorakit train` flags (after --)")
    sub.choices["all"].add_argument("--only", default="", help="comma-separated model:method filter")
    args = p.parse_args()
    if args.cmd == "make-checkpoint":
        make_checkpoint(args.out)
    elif args.cmd == "run":
        print(json.dumps(run(args)), flush=True)
    elif args.cmd == "cli":
        cli_bench(args)
    elif args.cmd == "speed":
        print(json.dumps(speed(args)), flush=True)
    else:
        only = {s for s in args.only.split(",") if s}
        for model, method, steps in CONFIGS:
            if only and f"{model}:{method}" not in only:
                continue
            cmd = [sys.executable, __file__, "run", "--model", model, "--method", method, "--steps", str(steps),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--rank", str(args.rank),
                   "--loss-chunk", str(args.loss_chunk)]
            if not args.grad_checkpoint:
                cmd.append("--no-grad-checkpoint")
            if args.lean_malloc and method != "peft":
                cmd.append("--lean-malloc")
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = res.stdout.strip().splitlines()[-1] if res.returncode == 0 else json.dumps(
                {"model": model, "method": method, "error": res.stderr.strip().splitlines()[-1:]})
            print(line, flush=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
