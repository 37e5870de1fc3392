"""`lorakit eval` end to end: perplexity, style, drift and samples for the base and each adapter."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from lorakit.adapters import read_adapter_config
from lorakit.adapters.prompt_io import read_virtual_config
from lorakit.errors import LorakitError
from lorakit.eval import dataset, drift, report, samples
from lorakit.eval.perplexity import perplexity_table
from lorakit.infer.batch import BASE
from lorakit.infer.virtual_rows import is_virtual_folder, load_any_adapter

log = logging.getLogger("lorakit")


def check_adapters(adapters: dict[str, str | os.PathLike]) -> dict[str, Path]:
    """Validate names and read every adapter config before any model is loaded."""
    checked = {}
    for name, path in adapters.items():
        if name == BASE:
            raise LorakitError(f"adapter name '{BASE}' is reserved for the model without adapters; pick another name")
        if not name or any(c in name for c in "=/\\"):
            raise LorakitError(f"adapter name {name!r}: use letters, digits, '-' or '_'")
        if is_virtual_folder(path):  # prefix/prompt tuning: its own config fields
            read_virtual_config(path)
        else:
            read_adapter_config(path)  # one-line error naming the file when it is not an adapter
        checked[name] = Path(path)
    return checked


def run_eval(model_spec: str | None, adapters: dict[str, str | os.PathLike], data_dir: str | os.PathLike,
             out_dir: str | os.PathLike, *, max_eval_tokens: int = 2500, n_style_prompts: int = 6,
             max_new_tokens: int = 128, drift_tokens: int = 48, temperature: float = 0.7,
             corpus_chars: int = 300_000, seed: int = 0, threads: int | None = None,
             precision: str = "auto") -> dict:
    """Evaluate the base model and each adapter; writes OUT/report.json and OUT/report.html.

    adapters: name -> adapter directory. max_eval_tokens: scored test tokens per book. precision:
    fp32, bf16 (the base's weights in bf16, the adapters' factors and the loss's softmax fp32) or
    auto (bf16 where the CPU runs it natively). Returns the report dict (what report.json holds).
    """
    from lorakit.models import load_model
    from lorakit.runtime.precision import check_precision, hold_base_in
    from lorakit.runtime.device import set_threads

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    paths = check_adapters(adapters)
    rows = dataset.read_split(data_dir, "test")  # refuse an empty test split before loading anything
    if not rows:
        raise LorakitError(f"{Path(data_dir) / 'test.jsonl'}: no test samples; re-run `lorakit data prepare` "
                           "with --test-fraction > 0")
    set_threads(threads)
    check_precision(precision)  # a bad name fails before loading
    model, tok = load_model(model_spec, dtype=torch.float32)
    precision = hold_base_in(model, precision)
    for name, path in paths.items():  # refuses an adapter made for another base, model unchanged
        load_any_adapter(model, path, name)  # prefix/prompt: tensors the loss and the engine put in front
    targets = [BASE, *paths]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    rows = dataset.test_rows(data_dir, context)
    seconds["load"] = time.perf_counter() - started

    t = time.perf_counter()
    books = dataset.by_book(rows, max_eval_tokens, seed)
    ppl = perplexity_table(model, targets, {b: [r.sample for r in rs] for b, rs in books.items()}, pad_id)
    seconds["perplexity"] = time.perf_counter() - t
    log.info("perplexity: %s", ", ".join(f"{k} {v['overall']['ppl']:.2f}" for k, v in ppl.items()))

    t = time.perf_counter()
    prompts = dataset.prompt_rows(rows, n_style_prompts, samples.SEED_TASKS, seed)
    gens = samples.generate_for_prompts(model, tok, prompts, targets, max_new_tokens, temperature, seed)
    style = samples.style_scores(gens, targets, dataset.corpus_texts(data_dir, corpus_chars, seed))
    seconds["generation+style"] = time.perf_counter() - t
    log.info("style distance: %s", ", ".join(f"{k} {v['distance']:.3f}" for k, v in style["targets"].items()))

    t = time.perf_counter()
    drifted = drift.drift(model, tok, targets, pad_id, drift_tokens)
    seconds["drift"] = time.perf_counter() - t
    log.info("drift: %s", ", ".join(f"{k} {v:+.2f}%" for k, v in drifted["change_pct"].items()) or "no adapter")

    result = {
        "model": str(model_spec or "smollm2-135m-instruct"),
        "data": str(data_dir),
        "adapters": {k: str(v) for k, v in paths.items()},
        "settings": {"max_eval_tokens": max_eval_tokens, "n_style_prompts": n_style_prompts,
                     "max_new_tokens": max_new_tokens, "drift_tokens": drift_tokens, "temperature": temperature,
                     "seed": seed, "precision": precision},
        "perplexity": ppl,
        "style": style,
        "drift": drifted,
        "samples": samples.side_by_side(gens),
        "generations": gens,
        "training": {k: report.loss_curve_data(v) for k, v in paths.items()},
        "seconds": {**seconds, "total": time.perf_counter() - started},
    }
    out = Path(out_dir)
    if (out / "compare.json").is_file():  # `lorakit compare` into the same folder: show it in this report too
        result["compare"] = json.loads((out / "compare.json").read_text())
    report.write_json(out / "report.json", result)
    report.write_atomic(out / "report.html", report.eval_html(result))
    return result
