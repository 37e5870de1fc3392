"""`lorakit plan` predictions against measured peak RSS (bench/qlora_memory.py results).

    .venv/bin/python bench/plan_accuracy.py [--results bench/qlora_memory.jsonl]

Prints a markdown table: predicted total, measured peak, error. Only runs measured with
``--lean-malloc`` are compared (planned as the trainer's --release-memory); 1.5B full fine-tuning is predicted only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.qlora_memory import CKPT, qwen2_15b_config  # noqa: E402
from lorakit.plan import estimate, resolve_speed  # noqa: E402
from lorakit.plan.arch import load_config  # noqa: E402

# the config the run used: QLoRA read the saved checkpoint (its config.json says float32)
SPECS = {"qwen2-1.5b": qwen2_15b_config, "smollm2-135m-instruct": lambda: "smollm2-135m-instruct"}
QLORA_SPECS = {"qwen2-1.5b": lambda: str(CKPT / "config.json")}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "qlora_memory.jsonl")
    args = p.parse_args()
    runs = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    runs = [r for r in runs if "error" not in r and r.get("lean_malloc") and r["method"] != "peft" and r["model"] in SPECS]
    rows = [(r["model"], r["method"] + ("" if r.get("loss_chunk", 1024) == 1024 else f" (loss chunk {r['loss_chunk']})"), r)
            for r in runs] + [("qwen2-1.5b", "full", None)]
    print("| model | method | predicted GB (weights / act+logits) | measured peak GB | error |")
    print("|---|---|---|---|---|")
    for model, method, run in rows:
        r = run or {"batch": 1, "seq": 512, "rank": 16, "grad_checkpoint": True}
        spec = QLORA_SPECS.get(model, SPECS[model]) if method.startswith("qlora") else SPECS[model]
        config, name = load_config(spec()), method.split()[0]
        speed = resolve_speed(model_type=config.model_type, method=name, device=torch.device("cpu"),
                              grad_checkpoint=r["grad_checkpoint"], release_memory=True)
        est = estimate(config, method=name, batch_size=r["batch"], seq_len=r["seq"], rank=r["rank"],
                       loss_chunk_tokens=r.get("loss_chunk", 1024), available=10**12, speed=speed)
        pred = f"{est.total / 1e9:.2f} ({est.weights / 1e9:.2f} / {(est.activations + est.logits) / 1e9:.2f})"
        if run is None:
            print(f"| {model} | {method} | {pred} | not run (needs ~{est.total / 1e9:.0f} GB) | - |")
        else:
            err = (est.total / 1e9 - run["peak_rss_gb"]) / run["peak_rss_gb"]
            print(f"| {model} | {method} | {pred} | {run['peak_rss_gb']:.2f} | {err:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
