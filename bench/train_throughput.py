"""LoRA training throughput and memory: lorakit vs PEFT + transformers, same model, same batches.

    .venv/bin/python bench/train_throughput.py --steps 50                 # (a) B=4 x 256, fixed length
    .venv/bin/python bench/train_throughput.py --case dataset --data DIR  # (b) real prepared dataset
    .venv/bin/python bench/train_throughput.py --steps 50 --precision bf16 --compile   # lorakit's fastest
    .venv/bin/python bench/train_throughput.py --steps 50 --precision bf16 --compile --peft-precision bf16

Both systems train SmolLM2-135M-Instruct (fp32 weights, r=16, alpha=32, all linear layers, AdamW
lr 1e-4) from the *same* adapter initialisation (lorakit's, loaded into PEFT) on the same batches.
Each system runs alone in a fresh process, one after the other, exactly as it would train:
lorakit with `lorakit train`'s settings (the flags above mirror the trainer's), PEFT + transformers
as their user runs them (fp32, or bf16 autocast as the HF Trainer's ``bf16=True``). Reported per
system: the median step's tokens/s after two warm-up steps, the loss after the last step and the
process's peak RSS (VmHWM, `lorakit.train.progress.peak_rss_mb`); the load average before and
after tells whether the machine was quiet. (b) counts only labelled tokens: lorakit packs samples
into 512-token rows, PEFT pads each batch of 4 samples to its longest; both use completion-only loss.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.adapters import LoraConfig, add_adapter, save_adapter, set_trainable  # noqa: E402
from lorakit.models import load_model  # noqa: E402
from lorakit.plan.malloc import lean_malloc, release_free_heap  # noqa: E402
from lorakit.train.batches import Batches, Sample, load_samples, padded_batch  # noqa: E402
from lorakit.train.config import TrainConfig  # noqa: E402
from lorakit.train.loss import IGNORE  # noqa: E402
from lorakit.train.precision import autocast  # noqa: E402
from lorakit.train.progress import peak_rss_mb  # noqa: E402
from lorakit.train.run import make_fast, training_loss  # noqa: E402

LR, RANK, ALPHA = 1e-4, 16, 32


def matmul_peak_gflops(seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> float:
    """GEMM rate of this machine in `dtype` at the model's shapes (1024 x 576 @ 576 x 1536)."""
    a, b = torch.randn(1024, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024 * 576 * 1536 * n / (time.perf_counter() - start) / 1e9


def flops_per_token(model: torch.nn.Module, seq: int) -> float:
    """~4 x linear params (forward + input gradient through frozen weights) + LoRA + attention."""
    cfg = model.config
    # every Linear, the (tied) output head included: it is an nn.Linear sharing the embedding's weight
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 6 * seq * cfg.hidden_size * cfg.num_hidden_layers  # QK^T and AV, causal, fwd + bwd
    return 4 * linear + attention


def fixed_batches(n_steps: int, batch: int, seq: int, data: str | None):
    """(a): fixed-length windows of real text token ids if a dataset is given, else random ids."""
    if data:
        samples, _ = load_samples(Path(data) / "train.jsonl", max_seq_len=10**6)
        stream = [t for s in samples for t in s.ids]
    else:
        stream = torch.randint(0, 49152, (n_steps * batch * seq + 1,), generator=torch.Generator().manual_seed(0)).tolist()
    out = []
    for i in range(n_steps):
        rows = [Sample(stream[(i * batch + b) * seq:(i * batch + b + 1) * seq]) for b in range(batch)]
        out.append(padded_batch(rows, pad_id=0, mask_prompt=False))
    return out


def dataset_batches(n_steps: int, data: str):
    """(b): lorakit gets packed rows, PEFT padded batches of 4 samples, over the same sample order."""
    samples, _ = load_samples(Path(data) / "train.jsonl", max_seq_len=512)
    packed = Batches(samples, 4, seed=0, pad_id=2, packing=True, row_len=512, mask_prompt=True)
    padded = Batches(samples, 4, seed=0, pad_id=2, packing=False, mask_prompt=True)
    return [next(packed) for _ in range(n_steps)], [next(padded) for _ in range(n_steps)]


def build(system: str, adapter_dir: Path, precision: str = "fp32", release_memory: bool = False,
          attention: str | None = None, **speed):
    """(model, step) for `system`, set up as it would train.

    lorakit: exactly as `lorakit train` does (`run.make_fast`, `run.training_loss`), `speed` being its
    --fuse / --lean-memory / --compile settings (default: the trainer's), `release_memory` its
    --release-memory, `attention` its --attention. Both systems: `precision` "bf16" runs the forward
    and loss under bf16 autocast (for PEFT + transformers, what the HF Trainer's ``bf16=True`` does).
    """
    cpu = torch.device("cpu")
    if system == "lorakit":
        from lorakit.adapters import load_adapter

        cfg = TrainConfig(precision=precision, attention=attention, release_memory=release_memory, **speed)
        if release_memory:
            lean_malloc()  # before loading, as the trainer does
        model, _ = load_model()
        load_adapter(model, adapter_dir, trainable=True)  # the initialisation PEFT loads too
        set_trainable(model, "default")
        make_fast(model, cfg, precision, cpu)
        step_loss = functools.partial(training_loss(cfg, precision, cpu), model)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model()[0], adapter_dir, is_trainable=True)

        def step_loss(b):
            labels = b["labels"]  # already shifted; HF shifts itself, so hand it unshifted targets
            hf_labels = torch.full_like(labels, IGNORE)
            hf_labels[:, 1:] = labels[:, :-1]
            with autocast(precision, cpu):
                out = model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask"), labels=hf_labels)
            n = int((labels != IGNORE).sum())
            return out.loss * n, n
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)

    def step(batch) -> tuple[float, int]:
        loss, n = step_loss(batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if system == "lorakit" and release_memory:
            release_free_heap()  # the trainer's per-step hook under --release-memory
        return float(loss.detach()) / n, n

    return model, step


def with_padding_mask(batches):
    """PEFT needs an attention mask for padded rows (lorakit's right padding needs none)."""
    for b in batches:
        # a row's real tokens run up to its last labelled position + 1 (that token's target)
        labelled = (b["labels"] != IGNORE).long()
        upto = labelled.flip(1).cummax(1).values.flip(1)  # 1 up to the last labelled position
        b["attention_mask"] = torch.maximum(upto, torch.roll(upto, 1, 1))
    return batches


def make_adapter(tmp: Path) -> Path:
    torch.manual_seed(0)
    model, _ = load_model()
    add_adapter(model, LoraConfig(r=RANK, alpha=ALPHA, target_modules="all-linear"))
    return save_adapter(model, tmp / "init")


def worker(system: str, args: argparse.Namespace, adapter_dir: Path) -> dict:
    """One system alone in this process: per-step times, token counts and losses, and peak RSS."""
    torch.set_num_threads(2)
    if args.case == "fixed":
        batches = fixed_batches(args.steps, 4, 256, args.data)
    else:
        packed, padded = dataset_batches(args.steps, args.data)
        batches = packed if system == "lorakit" else with_padding_mask(padded)
    if system == "lorakit":
        model, step = build(system, adapter_dir, args.precision, args.release_memory, args.attention,
                            compile=args.compile)
    else:
        model, step = build(system, adapter_dir, args.peft_precision)
    rows = []
    for b in batches:
        start = time.perf_counter()
        loss, n = step(b)
        rows.append((time.perf_counter() - start, n, loss))
    return {"system": system, "steps": rows, "peak_rss_mb": peak_rss_mb(),
            "attention": model.config._attn_implementation}


def summarise(run: dict, fpt: float, peak: float) -> dict:
    rates = [n / t for t, n, _ in run["steps"][2:]]  # the first two steps warm up allocators (and compile)
    tps = statistics.median(rates)
    return {"tokens_per_s": round(tps, 1), "gflops": round(tps * fpt / 1e9, 1),
            "share_of_fp32_peak": round(tps * fpt / 1e9 / peak, 3), "final_loss": round(run["steps"][-1][2], 4),
            "peak_rss_mb": round(run["peak_rss_mb"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--case", choices=["fixed", "dataset"], default="fixed")
    ap.add_argument("--data", default=None, help="prepared dataset dir (required for --case dataset)")
    ap.add_argument("--compile", action="store_true", help="lorakit runs as `lorakit train --compile`")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="lorakit's --precision")
    ap.add_argument("--release-memory", action="store_true", help="lorakit runs with --release-memory")
    ap.add_argument("--attention", default=None,
                    help="lorakit's --attention (e.g. eager, eager_recompute; default: the trainer's choice)")
    ap.add_argument("--peft-precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: PEFT + transformers under bf16 autocast (the HF Trainer's bf16=True)")
    ap.add_argument("--only", choices=["lorakit", "peft"],
                    help="run one system (to compare lorakit's own settings; no ratio is printed)")
    ap.add_argument("--worker", choices=["lorakit", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case == "dataset" and not args.data:
        ap.error("--case dataset needs --data DIR (from `lorakit data prepare`)")
    if args.worker:
        print(json.dumps(worker(args.worker, args, Path(args.adapter))))
        return
    torch.set_num_threads(2)
    load_before = os.getloadavg()[0]
    adapter_dir = make_adapter(Path(tempfile.mkdtemp(prefix="lorakit-bench-")))
    peak = matmul_peak_gflops()
    peak_bf16 = matmul_peak_gflops(dtype=torch.bfloat16)
    model_for_flops, _ = load_model()
    fpt = flops_per_token(model_for_flops, 256 if args.case == "fixed" else 512)
    del model_for_flops

    runs = {}
    for system in [args.only] if args.only else ["lorakit", "peft"]:  # one after the other, each alone
        cmd = [sys.executable, __file__, "--worker", system, "--adapter", str(adapter_dir)] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode:
            sys.exit(f"{system} worker failed:\n{out.stderr[-3000:]}")
        runs[system] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{system}: " + " ".join(f"{n / t:.0f}" for t, n, _ in runs[system]["steps"]) + " tok/s", flush=True)
    peak = max(peak, matmul_peak_gflops())  # again after the run: background load can spoil one reading
    settings = {"lorakit": {"precision": args.precision, "compile": args.compile, "release_memory": args.release_memory},
                "peft": {"precision": args.peft_precision}}
    result = {"case": args.case, "steps": args.steps,
              **{name: {**settings[name], "attention": run["attention"], **summarise(run, fpt, peak)}
                 for name, run in runs.items()},
              "matmul_peak_gflops": {"fp32": round(peak, 1), "bf16": round(peak_bf16, 1)},
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if args.only:
        print(json.dumps(result, indent=1))
        return
    result["speedup"] = round(result["lorakit"]["tokens_per_s"] / result["peft"]["tokens_per_s"], 2)
    result["memory_ratio"] = round(result["lorakit"]["peak_rss_mb"] / result["peft"]["peak_rss_mb"], 2)
    result["loss_gap"] = round(abs(result["lorakit"]["final_loss"] - result["peft"]["final_loss"])
                               / result["peft"]["final_loss"], 4)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
