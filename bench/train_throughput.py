"""LoRA training throughput and memory: lorakit vs PEFT + transformers, same model, same batches.

    .venv/bin/python bench/train_throughput.py --steps 50                 # (a) B=4 x 256, fixed length
    .venv/bin/python bench/train_throughput.py --case dataset --data DIR  # (b) real prepared dataset
    .venv/bin/python bench/train_throughput.py --steps 50 --compile       # (a), lorakit as `train --compile`

Both systems train SmolLM2-135M-Instruct (fp32, r=16, alpha=32, all linear layers, AdamW
lr 1e-4) from the *same* adapter initialisation (lorakit's, loaded into PEFT). Throughput:
both models live in one process and take turns step by step, so background load hits both
alike; the median step is reported. Peak memory: each system runs alone in a fresh
subprocess (VmHWM, `lorakit.train.progress.peak_rss_mb`). (b) counts only real
(non-padding) tokens: lorakit packs samples into 512-token rows, PEFT pads each batch of 4
samples to its longest; both use completion-only loss.
"""

from __future__ import annotations

import argparse
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
from lorakit.train.loss import IGNORE  # noqa: E402
from lorakit.train.methods import speed_and_memory  # noqa: E402
from lorakit.train.objective import causal_lm_loss  # noqa: E402
from lorakit.train.progress import peak_rss_mb  # noqa: E402

LR, RANK, ALPHA = 1e-4, 16, 32


def matmul_peak_gflops(seconds: float = 2.0) -> float:
    """fp32 GEMM rate of this machine at the model's shapes (1024 x 576 @ 576 x 1536)."""
    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
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


def build(system: str, adapter_dir: Path, **speed):
    """(model, step) for `system`; `speed`: `speed_and_memory` settings for lorakit (default: the trainer's)."""
    model, _ = load_model()
    if system == "lorakit":
        from lorakit.adapters import load_adapter

        load_adapter(model, adapter_dir, trainable=True)
        set_trainable(model, "default")
        speed_and_memory(model, **speed)  # as `lorakit train` does (--fuse, --lean-memory; or --compile)
        step_loss = lambda b: causal_lm_loss(model, b)  # noqa: E731
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)

        def step_loss(b):
            labels = b["labels"]  # already shifted; HF shifts itself, so hand it unshifted targets
            hf_labels = torch.full_like(labels, IGNORE)
            hf_labels[:, 1:] = labels[:, :-1]
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
        if system == "lorakit":
            release_free_heap()  # --lean-memory: the trainer's per-step hook
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


def worker(system: str, case: str, steps: int, data: str | None, adapter_dir: Path, compile: bool = False) -> dict:
    """One system alone: peak RSS after `steps` steps."""
    torch.set_num_threads(2)
    if system == "lorakit":
        lean_malloc()  # as `lorakit train` does (--lean-memory, the default)
    if case == "fixed":
        batches = fixed_batches(steps, 4, 256, data)
    else:
        packed, padded = dataset_batches(steps, data)
        batches = packed if system == "lorakit" else with_padding_mask(padded)
    _, step = build(system, adapter_dir, compile=compile)
    for b in batches:
        step(b)
    return {"system": system, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--case", choices=["fixed", "dataset"], default="fixed")
    ap.add_argument("--data", default=None, help="prepared dataset dir (required for --case dataset)")
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="lorakit runs as `lorakit train --compile`")
    ap.add_argument("--worker", choices=["lorakit", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.case, args.mem_steps, args.data, Path(args.adapter), args.compile)))
        return
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="lorakit-bench-"))
    adapter_dir = make_adapter(tmp)
    peak = matmul_peak_gflops()

    memory = {}
    for system in ("lorakit", "peft"):
        cmd = [sys.executable, __file__, "--worker", system, "--case", args.case, "--mem-steps", str(args.mem_steps),
               "--adapter", str(adapter_dir)] + (["--data", args.data] if args.data else []) + \
              (["--compile"] if args.compile else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        memory[system] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]

    if args.case == "fixed":
        batches = fixed_batches(args.steps, 4, 256, args.data)
        feeds = {"lorakit": batches, "peft": batches}
    else:
        packed, padded = dataset_batches(args.steps, args.data)
        feeds = {"lorakit": packed, "peft": with_padding_mask(padded)}
    systems = {name: build(name, adapter_dir, compile=args.compile)[1] for name in ("lorakit", "peft")}
    model_for_flops, _ = load_model()
    fpt = flops_per_token(model_for_flops, 256 if args.case == "fixed" else 512)
    del model_for_flops
    rows = {name: [] for name in systems}
    for i in range(args.steps):
        for name, step in systems.items():
            start = time.perf_counter()
            loss, n = step(feeds[name][i])
            rows[name].append((time.perf_counter() - start, n, loss))
        print(f"step {i + 1}: " + "  ".join(f"{k} {v[-1][1] / v[-1][0]:.0f} tok/s loss {v[-1][2]:.4f}"
                                           for k, v in rows.items()), flush=True)
    peak = max(peak, matmul_peak_gflops())  # again after the run: background load can spoil one reading
    result = {"case": args.case, "steps": args.steps, "lorakit_compile": args.compile,
              "matmul_peak_gflops": round(peak, 1)}
    for name, r in rows.items():
        rates = [n / t for t, n, _ in r[2:]]  # the first two steps warm up allocators
        tps = statistics.median(rates)
        result[name] = {"tokens_per_s": round(tps, 1), "gflops": round(tps * fpt / 1e9, 1),
                        "share_of_peak": round(tps * fpt / 1e9 / peak, 3), "final_loss": round(r[-1][2], 4),
                        "peak_rss_mb": round(memory[name])}
    result["speedup"] = round(result["lorakit"]["tokens_per_s"] / result["peft"]["tokens_per_s"], 2)
    result["memory_ratio"] = round(memory["lorakit"] / memory["peft"], 2)
    result["loss_gap"] = round(abs(result["lorakit"]["final_loss"] - result["peft"]["final_loss"])
                               / result["peft"]["final_loss"], 4)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
