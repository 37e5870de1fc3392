"""Merged model vs base vs unmerged adapter: logits equality and generation speed (issue 5, merge target).

Usage: python bench/merge_speed.py --adapter DIR [--model M] [--tokens 64] [--repeats 3]
Merges the adapter into a temp directory and prints max |logits merged - logits adapted| beside
the same gap for PEFT's own `merge_and_unload`, and each model's gap to a float64 copy of the
adapted model (what fp32 summation order alone costs). Then times greedy generation (HF
`generate`, KV cache, batch 1) of each model in turn, interleaved so machine load hits all three alike.
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


def logit_gaps(base, adapted, merged, adapter_dir: str, ids: torch.Tensor) -> dict[str, float]:
    """Max |difference| of logits: merged vs adapted (lorakit and PEFT), and each vs float64."""
    import copy

    from peft import PeftModel

    with torch.inference_mode():
        ref = copy.deepcopy(adapted).double()(input_ids=ids).logits
        ours, ours_merged = adapted(input_ids=ids).logits.double(), merged(input_ids=ids).logits.double()
        peft = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir).eval()
        theirs = peft(input_ids=ids).logits.double()
        theirs_merged = peft.merge_and_unload()(input_ids=ids).logits.double()
    gap = lambda a, b: (a - b).abs().max().item()  # noqa: E731
    return {"lorakit merged - adapted": gap(ours_merged, ours), "PEFT merged - adapted": gap(theirs_merged, theirs),
            "lorakit adapted - PEFT adapted": gap(ours, theirs), "adapted (fp32) - float64": gap(ours, ref),
            "merged (fp32) - float64": gap(ours_merged, ref), "max |logit|": ref.abs().max().item()}


def main() -> None:
    from transformers import AutoModelForCausalLM

    from lorakit.adapters import load_adapter
    from lorakit.merge import merge_to_dir
    from lorakit.models import load_model
    from lorakit.runtime.device import set_threads

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
    gaps = logit_gaps(base, adapted, merged, args.adapter, ids)
    models = {"base": base, "adapter (unmerged)": adapted, "merged": merged}
    for m in models.values():
        tokens_per_s(m, ids, 4)  # warm-up
    speeds: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            speeds[name].append(tokens_per_s(m, ids, args.tokens))
    print(f"threads {threads}, prompt {ids.shape[1]} tokens, {args.tokens} new tokens, greedy, batch 1, "
          f"median of {args.repeats}")
    print("max |logits difference|: " + ", ".join(f"{k} {v:.2e}" for k, v in gaps.items()))
    print("| model | tokens/s (median) | runs |")
    print("|---|---|---|")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
