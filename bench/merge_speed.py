"""Merged model vs base vs unmerged adapter: logits equality and generation speed (issue 5, merge target).

Usage: python bench/merge_speed.py --adapter DIR [--model M] [--tokens 64] [--repeats 3]
Merges the adapter into a temp directory, then times greedy generation (HF `generate`, KV cache,
batch 1) of each model in turn, interleaved so machine load hits all three alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "Write a scene description in the style of Anton Chekhov, set in a garden in the evening."


def tokens_per_s(model, ids: torch.Tensor, n: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - started)


def main() -> None:
    from transformers import AutoModelForCausalLM

    from lorakit.adapters import load_adapter
    from lorakit.merge import merge_to_dir
    from lorakit.models import load_model
    from lorakit.train.run import set_threads

    p = argparse.ArgumentParser()
    p.add_argument("--adapter", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    threads = set_threads(None)
    base, tok = load_model(args.model)
    adapted, _ = load_model(args.model, with_tokenizer=False)
    load_adapter(adapted, args.adapter)
    with tempfile.TemporaryDirectory() as tmp:
        out = merge_to_dir(args.model, args.adapter, Path(tmp) / "merged")
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(chat, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        diff = (merged(input_ids=ids).logits - adapted(input_ids=ids).logits).abs().max().item()
    models = {"base": base, "adapter (unmerged)": adapted, "merged": merged}
    for m in models.values():
        tokens_per_s(m, ids, 4)  # warm-up
    speeds: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            speeds[name].append(tokens_per_s(m, ids, args.tokens))
    print(f"threads {threads}, prompt {ids.shape[1]} tokens, {args.tokens} new tokens, greedy, batch 1, "
          f"median of {args.repeats}")
    print(f"max |logits merged - logits adapted| = {diff:.2e}")
    print("| model | tokens/s (median) | runs |")
    print("|---|---|---|")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
