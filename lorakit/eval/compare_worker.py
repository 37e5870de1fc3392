"""One `lorakit compare` run in a fresh process: train, measure peak memory, score held-out perplexity
and drift (--task classify: accuracy and the confusion matrix on test.jsonl).

A process of its own per method makes peak RSS that method's alone (the allocator never
gives everything back, so sequential runs in one process would inherit each other's peak).
Usage: ``python -m lorakit.eval.compare_worker SPEC.json RESULT.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from lorakit.runtime.memory import peak_rss_mb


def saved_bytes(out: Path, method: str) -> int:
    """Size of what the run ships: the adapter file, or every weight file of a full model."""
    if method in ("full", "head"):
        return sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return (out / "adapter_model.safetensors").stat().st_size


def heldout_lm_scores(spec: dict, out: Path) -> dict:
    """Perplexity of the trained model on the same test subset the parent scores the base on, and its
    mean NLL on the base's answers to the everyday prompts (drift; the parent takes the change)."""
    from contextlib import nullcontext

    from lorakit.data.schema import Sample
    from lorakit.eval.dataset import by_book, test_rows
    from lorakit.eval.drift import mean_nll
    from lorakit.eval.perplexity import perplexity_by_book, target_context
    from lorakit.infer.virtual_rows import load_any_adapter
    from lorakit.models import load_model

    if spec["train"]["method"] in ("full", "head"):
        model, tok = load_model(out)
        running = nullcontext(model)
    else:  # LoRA/DoRA layers, or prefix/prompt tokens in front of every sample
        model, tok = load_model(spec["train"]["model"])
        load_any_adapter(model, out, "trained")
        running = target_context(model, "trained")
    rows = test_rows(spec["train"]["data"], getattr(model.config, "max_position_embeddings", None) or 2048)
    books = by_book(rows, spec["max_eval_tokens"], spec["seed"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    answers = [Sample(ids, prompt_len) for ids, prompt_len in spec["drift_answers"]]
    with running:
        return {"perplexity": perplexity_by_book(model, {b: [r.sample for r in rs] for b, rs in books.items()}, pad_id),
                "drift_nll": mean_nll(model, answers, pad_id)}


def run(spec: dict) -> dict:
    """Train as ``spec["train"]`` says, then evaluate; returns the measurements."""
    from lorakit.train.config import TrainConfig
    from lorakit.train.run import run_training

    cfg = TrainConfig(**spec["train"])
    started = time.perf_counter()
    summary = run_training(cfg, replace=True)  # the comparison owns its folders
    train_seconds = time.perf_counter() - started
    peak = peak_rss_mb()  # before evaluation, which loads a second copy of the weights
    out = Path(cfg.out)
    t = time.perf_counter()
    if cfg.task == "classify":  # accuracy on test.jsonl, not perplexity
        from lorakit.eval.compare_classify import heldout_scores

        scored = {"scores": heldout_scores(spec, out)}
    else:
        scored = heldout_lm_scores(spec, out)
    return {"steps": summary["steps"], "tokens": summary["tokens"], "train_seconds": train_seconds,
            "peak_rss_mb": peak, "saved_bytes": saved_bytes(out, cfg.method), **scored,
            "eval_seconds": time.perf_counter() - t}


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    torch.manual_seed(0)
    result = run(json.loads(spec_path.read_text()))
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
