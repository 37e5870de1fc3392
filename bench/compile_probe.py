"""Does `torch.compile` of the decoder layers pay for LoRA training on this CPU? (issue 4, speed work)

A probe, not a side-by-side benchmark: lorakit alone (SmolLM2-135M, r=16 all-linear, fp32,
4 x 256 tokens), the same batches and steps in one fresh process per setting, and the median
tokens/s of the steps after the first two (the first one compiles). Settings:

  eager            what `lorakit train` runs (--fuse, --lean-memory)
  compile          the same, each decoder layer `.compile()`d
  eager-plain      no fusing, no lean layers
  compile-plain    no fusing, no lean layers, each decoder layer `.compile()`d

Usage: .venv/bin/python bench/compile_probe.py [--steps 12] [--modes eager,compile,eager-plain,compile-plain]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402

MODES = ("eager", "compile", "eager-plain", "compile-plain")


def worker(mode: str, steps: int, adapter_dir: Path) -> dict:
    from lorakit.runtime.memory import peak_rss_mb

    torch.set_num_threads(2)
    plain = mode.endswith("plain")
    _, step = tt.build("lorakit", adapter_dir, fuse=not plain, lean_memory=not plain, compile=mode.startswith("compile"))
    rates, losses = [], []
    for batch in tt.fixed_batches(steps, 4, 256, None):
        start = time.perf_counter()
        loss, n = step(batch)
        rates.append(n / (time.perf_counter() - start))
        losses.append(loss)
    return {"mode": mode, "tok_s": statistics.median(rates[2:]), "first_step_s": 1024 / rates[0],
            "final_loss": losses[-1], "peak_rss_mb": round(peak_rss_mb())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, Path(args.adapter))))
        return
    adapter_dir = tt.make_adapter(Path(tempfile.mkdtemp(prefix="lorakit-compile-")))
    print("| setting | tokens/s (median) | first step | loss after the last step | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps), "--adapter", str(adapter_dir)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {mode} | {r['tok_s']:.1f} | {r['first_step_s']:.1f} s | {r['final_loss']:.4f} | {r['peak_rss_mb']} MB |",
              flush=True)


if __name__ == "__main__":
    main()
