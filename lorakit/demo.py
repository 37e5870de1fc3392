"""`lorakit demo` / `make demo`: from a folder of books to an evaluated, merged style adapter.

Stages, each a call into the package: corpus (given, or downloaded by Gutenberg id) ->
`data prepare` (split by book, so the test books are never trained on) -> `train` (a LoRA
adapter on the CPU within a time budget, live progress bar) -> `eval` (held-out perplexity,
style, drift, side-by-side samples; report.html) -> `merge` (a plain transformers model).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from lorakit.errors import LorakitError

log = logging.getLogger("lorakit")

# A few English translations of 19th-century Russian novels on Project Gutenberg, used when
# no corpus is given: Crime and Punishment, Anna Karenina, Fathers and Sons, Dead Souls,
# The Lady with the Dog and Other Stories, Notes from the Underground.
DEFAULT_IDS = (2554, 1399, 47935, 1081, 13415, 600)
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "gutenberg-russian"


def find_corpus(corpus: str | None) -> Path | None:
    """--corpus, else $LORAKIT_CORPUS, else the shared corpus beside a checkout (None: download)."""
    for candidate in (corpus, os.environ.get("LORAKIT_CORPUS")):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.exists():
                raise LorakitError(f"corpus {path} not found; pass a folder of .txt books with --corpus")
            return path
    return SHARED_CORPUS if SHARED_CORPUS.is_dir() else None


def download_corpus(out: Path) -> Path:
    """Fetch DEFAULT_IDS through the data pipeline's downloader; offline: one line saying what to do."""
    from lorakit.data.download import download_ebooks

    try:
        download_ebooks(DEFAULT_IDS, out)
    except LorakitError as exc:
        raise LorakitError(f"no corpus given and the download failed ({exc}); "
                           "pass a folder of books with --corpus DIR (or set LORAKIT_CORPUS)") from None
    return out


def steps_for_budget(step_seconds: list[float], minutes: float) -> int:
    """Optimizer steps that fit `minutes` of training, from a probe's step times (first one dropped:
    it warms up allocators and caches). The median resists one step slowed by other work."""
    times = sorted(step_seconds[1:] or step_seconds)
    return max(10, int(minutes * 60 / times[len(times) // 2]))


def run_demo(corpus: str | None, out: str | os.PathLike, *, minutes: float = 12.0, seq_len: int = 256,
             batch_size: int = 4, rank: int = 16, model: str | None = None, eval_tokens: int = 6000,
             replay_share: float = 0.05) -> dict:
    """Run every stage; returns the paths and headline numbers (also in OUT/demo.json)."""
    from lorakit.data.prepare import prepare_dataset
    from lorakit.data.replay import add_replay, load_prompts, replay_rows
    from lorakit.eval.run import run_eval
    from lorakit.merge import merge_to_dir
    from lorakit.models import load_model, load_tokenizer
    from lorakit.train.config import TrainConfig
    from lorakit.train.progress import read_metrics
    from lorakit.train.run import run_training

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = find_corpus(corpus) or download_corpus(out / "books")
    print(f"[1/5] corpus: {source}")
    data = out / "data"
    prepare_dataset([source], data, load_tokenizer(model), fmt="text", seq_len=seq_len, split_by="book",
                    val_fraction=0.03, test_fraction=0.08, seed=0, overwrite=True)
    print(f"[2/5] dataset: {data} (report.json has what was removed and why)")
    if replay_share:
        base_model, tokenizer = load_model(model)
        record = add_replay(data, replay_rows(base_model, tokenizer, load_prompts()), replay_share)
        del base_model
        print(f"      + the base's own answers to {record['prompts']} everyday requests, "
              f"{record['actual_share']:.0%} of train tokens (replay: keeps general behaviour)")

    # no speed settings: the trainer's defaults (precision, packing, completion-only loss: auto) decide
    base = dict(model=model, data=str(data), rank=rank, batch_size=batch_size, max_seq_len=seq_len,
                lr=3e-4, warmup=10, eval_batches=10, seed=0)
    probe = out / "probe"
    run_training(TrainConfig(**base, out=str(probe), max_steps=6, progress=False, save_every=0), replace=True)
    times = [r["step_time"] for r in read_metrics(probe / "metrics.jsonl") if "step_time" in r]
    steps = steps_for_budget(times, minutes)
    adapter = out / "adapter"
    print(f"[3/5] training {steps} steps (~{minutes:g} min at {minutes * 60 / steps:.1f} s per step)")
    run_training(TrainConfig(**base, out=str(adapter), max_steps=steps, eval_every=max(1, steps // 5),
                             save_every=max(1, steps // 5)), replace=True)
    report_dir = out / "report"
    print("[4/5] evaluating base vs adapter")
    report = run_eval(model, {"demo": adapter}, data, report_dir, max_eval_tokens=eval_tokens)
    merged = merge_to_dir(model, adapter, out / "merged", "float32", force=True)
    print(f"[5/5] merged model: {merged}")
    summary = {"corpus": str(source), "dataset": str(data), "adapter": str(adapter), "steps": steps,
               "report": str(report_dir / "report.html"), "merged": str(merged),
               "minutes": round((time.perf_counter() - started) / 60, 1), "headline": headline(report)}
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def headline(report: dict) -> dict[str, str]:
    """The numbers a user looks at first: held-out perplexity, its change, drift, style distance."""
    ppl = report["perplexity"]
    base, names = next(iter(ppl)), list(ppl)[1:]
    out = {"held-out perplexity (base)": f"{ppl[base]['overall']['ppl']:.2f}"}
    for name in names:
        value = ppl[name]["overall"]["ppl"]
        change = 100 * (value / ppl[base]["overall"]["ppl"] - 1)
        out[f"held-out perplexity ({name})"] = f"{value:.2f} ({change:+.1f}%)"
        out[f"drift on everyday prompts ({name})"] = f"{report['drift']['change_pct'][name]:+.2f}%"
        styles = report["style"]["targets"]
        out[f"style distance to the corpus (base -> {name})"] = f"{styles[base]['distance']:.3f} -> {styles[name]['distance']:.3f}"
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lorakit demo` to the top-level parser."""
    p = sub.add_parser("demo", help="books -> dataset -> LoRA adapter -> report -> merged model, on this machine")
    p.add_argument("--corpus", default=None, help="folder of books (.txt); default $LORAKIT_CORPUS, else download")
    p.add_argument("--out", default="runs/demo", help="where everything goes (default runs/demo)")
    p.add_argument("--minutes", type=float, default=12.0, help="training time budget (default 12)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training window")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--model", default=None, help="base model (default smollm2-135m-instruct)")
    # the default comes from the demo's replay-share runs (bench/RESULTS_eval.md): with no replay the
    # adapter drifts the base's everyday answers far past issue 5's 5% target; at 7% and more over
    # ~120 steps it overshoots the other way (such answers become *more* likely); 3% was too little
    # at the step count a slower CPU affords in the budget (issue 16); 5% holds drift within 5% there
    p.add_argument("--replay-share", type=float, default=0.05,
                   help="share of train tokens that are the base's own answers to everyday requests, so the "
                        "adapter keeps its general behaviour (default 0.05; 0: none)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    summary = run_demo(args.corpus, args.out, minutes=args.minutes, seq_len=args.seq_len, rank=args.rank,
                       model=args.model, replay_share=args.replay_share)
    print(f"done in {summary['minutes']} min. report: {summary['report']}  merged model: {summary['merged']}")
    for key, value in summary["headline"].items():
        print(f"  {key}: {value}")
    return 0
