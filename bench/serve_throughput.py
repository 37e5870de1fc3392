"""Multi-adapter serving throughput: lorakit's engine beside one-at-a-time serving with adapter swaps.

Runs on the real SmolLM2-135M-Instruct with 8 random r=16 all-linear adapters (saved and loaded
as PEFT files), the same requests in every scenario, each generating exactly --tokens tokens:

  single   lorakit engine, every request on adapter a0 (one batch)
  mixed    lorakit engine, requests spread over 8 adapters (one batch, 8 adapters mixed per forward)
  swap     baseline: one request at a time, `set_adapter` to its adapter (as PEFT users swap),
           then transformers' `generate` with its KV cache
  hotload  while `mixed` streams, load one more r=16 adapter: time the load and the longest gap
           between two tokens of the running streams

Usage: .venv/bin/python bench/serve_throughput.py [--requests 16] [--tokens 48] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.adapters import LoraConfig, add_adapter, adapter_parameters, load_adapter, save_adapter, set_adapter  # noqa: E402
from lorakit.infer import hotswap  # noqa: E402
from lorakit.infer.engine import Engine  # noqa: E402
from lorakit.infer.prompts import encode_chat  # noqa: E402
from lorakit.infer.sampling import SamplingParams  # noqa: E402
from lorakit.models import load_model  # noqa: E402

TOPICS = ["the sea", "a library", "winter", "trains", "a garden", "the moon", "bread", "a violin",
          "mountains", "a market", "rain", "an old house", "bees", "a bridge", "snow", "a lighthouse"]


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_adapters(model, root: Path, count: int, rank: int) -> list[str]:
    """Save `count` random r=`rank` adapters as PEFT files, then load them back by name."""
    scratch, _ = load_model(with_tokenizer=False)
    names = []
    for i in range(count + 1):  # one extra for the hot-load test
        name = f"a{i}"
        add_adapter(scratch, LoraConfig(r=rank, alpha=2 * rank, target_modules="all-linear"), name)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in adapter_parameters(scratch, name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        save_adapter(scratch, root / name, name=name)
        names.append(name)
    del scratch
    for name in names[:count]:
        load_adapter(model, root / name, name)
    return names


def run_engine(engine: Engine, jobs: list[tuple[list[int], str]], tokens: int, during=None) -> dict:
    """Submit all jobs at once; returns tokens/s, and the longest inter-token gap while `during` ran."""
    stamps: list[list[float]] = [[] for _ in jobs]
    finished = queue.Queue()

    def sink(i):
        def emit(event):
            stamps[i].append(time.perf_counter())
            if event.kind != "token":
                finished.put(event)
        return emit

    start = time.perf_counter()
    for i, (ids, adapter) in enumerate(jobs):
        engine.submit(ids, adapter, SamplingParams(max_tokens=tokens, temperature=0), sink(i))
    extra = None
    if during is not None:
        time.sleep(1.0)  # let every stream get going first
        t0 = time.perf_counter()
        extra = during()
        t1 = time.perf_counter()
    events = [finished.get(timeout=600) for _ in jobs]
    elapsed = time.perf_counter() - start
    generated = sum(e.completion_tokens for e in events)
    out = {"tok_s": generated / elapsed, "seconds": elapsed, "tokens": generated}
    if during is not None:
        gaps = [b - a for s in stamps for a, b in zip(s, s[1:])]
        around = [b - a for s in stamps for a, b in zip(s, s[1:]) if b >= t0 and a <= t1]
        out.update(extra=extra, median_gap_ms=1000 * statistics.median(gaps),
                   max_gap_during_load_ms=1000 * max(around or [0.0]))
    return out


def run_swaps(model, jobs: list[tuple[list[int], str]], tokens: int) -> dict:
    """Baseline: each request alone, swapping the active adapter first (transformers generate, KV cache)."""
    start = time.perf_counter()
    generated = 0
    with torch.inference_mode():
        for ids, adapter in jobs:
            set_adapter(model, adapter)
            out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False, pad_token_id=2)
            generated += out.shape[1] - len(ids)
    elapsed = time.perf_counter() - start
    return {"tok_s": generated / elapsed, "seconds": elapsed, "tokens": generated}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="runs per scenario; the best is reported")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        names = make_adapters(model, Path(tmp), args.adapters, args.rank)
        prompts = [encode_chat(tok, [{"role": "user", "content": f"Write a short poem about {TOPICS[i % len(TOPICS)]}."}])
                   for i in range(args.requests)]
        mixed = [(ids, names[i % args.adapters]) for i, ids in enumerate(prompts)]
        single = [(ids, names[0]) for ids in prompts]
        engine = Engine(model, tok, max_batch=args.requests, max_context=512)
        engine.eos_ids = set()  # every request generates exactly --tokens tokens, so all scenarios do equal work
        run_engine(engine, single[:2], 4)  # warm-up
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for label, jobs in (("single", single), ("mixed", mixed)):
                res = run_engine(engine, jobs, args.tokens)
                if label not in best or res["tok_s"] > best[label]["tok_s"]:
                    best[label] = res
        hot_name = names[-1]
        hot = run_engine(engine, mixed, args.tokens,
                         during=lambda: hotswap.load(engine, "hot", Path(tmp) / hot_name) * 1000)
        engine.close()
        for _ in range(args.repeat):
            res = run_swaps(model, mixed, args.tokens)
            if "swap" not in best or res["tok_s"] > best["swap"]["tok_s"]:
                best["swap"] = res
    print(f"requests={args.requests} tokens={args.tokens} adapters={args.adapters} r={args.rank} "
          f"threads={torch.get_num_threads()}")
    for label in ("single", "mixed", "swap"):
        r = best[label]
        print(f"  {label:7s} {r['tok_s']:7.1f} tok/s  ({r['tokens']} tokens in {r['seconds']:.1f} s)")
    print(f"  mixed / single  = {best['mixed']['tok_s'] / best['single']['tok_s']:.2f}  (target >= 0.80)")
    print(f"  mixed / swap    = {best['mixed']['tok_s'] / best['swap']['tok_s']:.2f}  (target >= 3)")
    print(f"  hot load of an r={args.rank} adapter while {args.requests} streams run: {hot['extra']:.1f} ms "
          f"(target < 100); longest token gap during it {hot['max_gap_during_load_ms']:.0f} ms "
          f"vs median gap {hot['median_gap_ms']:.0f} ms")
    print(f"  peak RSS {rss_mb():.0f} MiB (model, 9 adapters, KV cache {engine.cache.bytes / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
