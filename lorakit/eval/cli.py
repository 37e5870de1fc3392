"""`lorakit eval`, `lorakit compare` and `lorakit merge`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lorakit.argtypes import nonneg_float, one_line_errors, positive_float, positive_int
from lorakit.errors import LorakitError
from lorakit.runtime.precision import INFER_PRECISIONS, PRECISIONS

MODEL_HELP = "HF model directory, .gguf file, alias or Hub id org/name[@revision] (default: smollm2-135m-instruct)"


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its folder) -> {name: path}; names must differ."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name, spec
        if not name or not path:
            raise LorakitError(f"--adapter {spec!r}: use NAME=PATH or PATH")
        if name in out:
            raise LorakitError(f"--adapter name {name!r} is given twice; name them: --adapter A=PATH1 --adapter B=PATH2")
        out[name] = path
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add `eval`, `compare` and `merge` to the top-level parser."""
    e = one_line_errors(sub.add_parser(
        "eval", help="perplexity, style, drift and samples: base vs adapters -> report.html (or a classifier's "
                     "accuracy: --task classify)",
        description="Evaluate the base model and each adapter on a prepared dataset; writes "
                    "OUT/report.json and a self-contained OUT/report.html. With --task classify: accuracy, "
                    "macro-F1, per-class accuracy and the confusion matrix of a classifier on one split, printed "
                    "(and written to --out FILE as JSON)."))
    e.add_argument("--task", default="lm", choices=("lm", "classify"),
                   help="lm (default): the language-model report; classify: score a classifier (--model, with at "
                        "most one SEQ_CLS --adapter from `lorakit train --task classify`) on a dataset from "
                        "`lorakit data prepare --task classify`")
    e.add_argument("--model", default=None, help=MODEL_HELP + "; --task classify: an adapter's recorded base when "
                                                             "not given")
    e.add_argument("--adapter", action="append", default=[], metavar="[NAME=]PATH", help="adapter directory (repeat)")
    e.add_argument("--data", required=True, metavar="DIR", help="dataset from `lorakit data prepare` (uses test.jsonl)")
    e.add_argument("--out", default=None, metavar="DIR",
                   help="report directory (default: eval-report); --task classify: a JSON file for the result "
                        "(default: printed only)")
    e.add_argument("--split", default=None, choices=("train", "valid", "test"),
                   help="--task classify: the split scored (default test)")
    e.add_argument("--batch-size", type=positive_int, default=None,
                   help="--task classify: examples per forward pass (default 16)")
    e.add_argument("--max-eval-tokens", type=positive_int, default=2500, help="scored test tokens per book (default 2500)")
    e.add_argument("--style-prompts", type=positive_int, default=6, help="held-out prompts generated for style and samples")
    e.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens per generation (default 128)")
    e.add_argument("--drift-tokens", type=positive_int, default=48, help="tokens of each base answer scored for drift")
    e.add_argument("--temperature", type=nonneg_float, default=0.7, help="sampling temperature of generations (0: greedy)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: physical cores)")
    e.add_argument("--precision", choices=INFER_PRECISIONS, default="auto",
                   help="bf16: the base in bf16 (adapters and the loss's softmax stay fp32) where the CPU runs bf16 "
                        "natively, faster there (bench/RESULTS_eval.md); perplexities move by bf16 rounding. "
                        "Default auto: bf16 where a probe, measured once per machine, finds it native, else fp32")
    e.set_defaults(func=cmd_eval)

    c = one_line_errors(sub.add_parser(
        "compare", help="full vs head vs LoRA r=4/8/16 vs DoRA r=8 vs prefix and prompt tuning on the same data "
                        "and tokens (or as classifiers: --task classify)",
        description="Train each method for the same steps (fitted to --budget-minutes, or --steps) "
                    "and tabulate trainable params, held-out perplexity, drift on everyday prompts, wall time, "
                    "peak memory, size. With --task "
                    "classify: every method trains a classifier for the same --epochs (default 1) and is scored "
                    "on test.jsonl: accuracy, macro-F1 and a confusion matrix per method."))
    c.add_argument("--task", default="lm", choices=("lm", "classify"),
                   help="lm (default): causal-LM perplexity; classify: sequence classifiers on a dataset from "
                        "`lorakit data prepare --task classify`")
    c.add_argument("--model", default=None, help=MODEL_HELP)
    c.add_argument("--data", required=True, metavar="DIR", help="dataset from `lorakit data prepare`")
    c.add_argument("--out", default="compare-report", metavar="DIR", help="output directory (default: compare-report)")
    c.add_argument("--budget-minutes", type=positive_float, default=None,
                   help="wall-time budget for everything (default 10 for --task lm; --task classify trains "
                        "--epochs unless this or --steps is given)")
    c.add_argument("--steps", type=positive_int, default=None,
                   help="fixed steps per method (--task lm: overrides --budget-minutes; --task classify: give one "
                        "of --epochs, --steps and --budget-minutes)")
    c.add_argument("--epochs", type=positive_float, default=None,
                   help="--task classify: passes over train.jsonl for every method (default 1)")
    c.add_argument("--lr", type=positive_float, default=None,
                   help="--task classify: one learning rate for every method (default: each method's own, as "
                        "`lorakit train --task classify` picks it)")
    c.add_argument("--methods", default=None, metavar="A,B,...",
                   help="subset of: full, head, lora-r4, lora-r8, lora-r16, dora-r8, prefix-n20, prompt-n20 "
                        "(default: all)")
    c.add_argument("--batch-size", type=positive_int, default=None, help="default 4; --task classify: 16, as train")
    c.add_argument("--max-seq-len", type=positive_int, default=None,
                   help="default 256; --task classify: 512, as train (longer examples are truncated)")
    c.add_argument("--max-eval-tokens", type=positive_int, default=None,
                   help="--task lm: scored test tokens per book (default 1000)")
    c.add_argument("--drift-tokens", type=positive_int, default=None,
                   help="--task lm: tokens of each base answer to the everyday prompts scored for drift (default 48)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: physical cores)")
    c.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="what every method trains in, as train's --precision (held-out scores stay fp32). "
                        "Default auto")
    c.set_defaults(func=cmd_compare)

    m = one_line_errors(sub.add_parser(
        "merge", help="fold an adapter into its base: a plain transformers model directory",
        description="Writes safetensors + config + tokenizer that AutoModelForCausalLM loads without lorakit; the "
                    "merge is computed in fp32, then cast to --dtype. --out is never the base, the adapter or a "
                    "model cache."))
    m.add_argument("--model", default=None, help="base model (default: the adapter's recorded base, else "
                                                 "smollm2-135m-instruct)")
    m.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory (LoRA, rsLoRA, DoRA, QLoRA)")
    m.add_argument("--out", required=True, metavar="DIR",
                   help="output model directory (written atomically); never the base model, the adapter or a model cache")
    m.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    m.add_argument("--force", action="store_true", help="replace --out if it is a model lorakit merged earlier")
    m.add_argument("--quantize", default="none", metavar="{none,nf4,int8}",
                   help="how the base was quantized when the adapter was trained (QLoRA: nf4): the base is loaded "
                        "that way and the merge is dequantize(W) + s*B*A in fp32, never re-quantized, then cast to "
                        "--dtype, so the merged model equals the QLoRA model; none (default): merge into the fp32 weights")
    m.set_defaults(func=cmd_merge)


def _check_out(out: str, data: str, model: str | None, adapters: dict[str, str] | None = None) -> None:
    """The report folder must not overlap what the command reads, nor a model cache."""
    from lorakit.outputs import check_output, model_path

    reads = [("the dataset (--data)", data), ("the base model (--model)", model_path(model))]
    reads += [(f"the adapter {name!r} (--adapter)", path) for name, path in (adapters or {}).items()]
    check_output(out, reads)


def cmd_eval(args: argparse.Namespace) -> int:
    """Handler of `lorakit eval`."""
    from lorakit.eval.run import run_eval

    if args.task == "classify":
        return cmd_eval_classify(args)
    for flag, value in (("--split", args.split), ("--batch-size", args.batch_size)):
        if value is not None:
            raise LorakitError(f"{flag} applies to --task classify; the language-model report reads test.jsonl")
    args.out = args.out or "eval-report"
    adapters = parse_adapters(args.adapter)
    _check_out(args.out, args.data, args.model, adapters)
    result = run_eval(args.model, adapters, args.data, args.out,
                      max_eval_tokens=args.max_eval_tokens, n_style_prompts=args.style_prompts,
                      max_new_tokens=args.max_new_tokens, drift_tokens=args.drift_tokens,
                      temperature=args.temperature, seed=args.seed, threads=args.threads, precision=args.precision)
    print(summary_lines(result))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_eval_classify(args: argparse.Namespace) -> int:
    """`lorakit eval --task classify`: one classifier on one split."""
    from lorakit.eval.classify import format_result, run_classify_eval, write_result

    adapters = parse_adapters(args.adapter)
    if len(adapters) > 1:
        raise LorakitError("--task classify scores one classifier: give at most one --adapter")
    adapter = next(iter(adapters.values()), None)
    if args.out is not None:
        _check_out(args.out, args.data, args.model, adapters)
    result = run_classify_eval(args.model, adapter, args.data, split=args.split or "test",
                               batch_size=args.batch_size or 16, threads=args.threads, precision=args.precision)
    print(format_result(result))
    if args.out is not None:
        print(f"result: {write_result(result, args.out)}")
    return 0


def summary_lines(result: dict) -> str:
    """The eval's headline numbers, one line per model."""
    lines = []
    for target, ppl in result["perplexity"].items():
        line = f"{target:>12}: ppl {ppl['overall']['ppl']:.2f}  style distance {result['style']['targets'][target]['distance']:.3f}"
        if target in result["drift"]["change_pct"]:
            line += f"  drift {result['drift']['change_pct'][target]:+.2f}%"
        lines.append(line)
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    """Handler of `lorakit compare`."""
    from lorakit.eval.compare import CLASSIFY_METHODS, METHODS, run_compare

    methods = CLASSIFY_METHODS if args.task == "classify" else METHODS
    if args.methods:
        known = {m.name: m for m in METHODS}
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise LorakitError(f"--methods {args.methods!r}: choose from {', '.join(known)}")
        methods = tuple(known[n] for n in names)
    _check_out(args.out, args.data, args.model)
    if args.task == "classify":
        return cmd_compare_classify(args, methods)
    for flag, value in (("--epochs", args.epochs), ("--lr", args.lr)):
        if value is not None:
            raise LorakitError(f"{flag} applies to --task classify; --task lm trains every method for --steps "
                               "(or --budget-minutes) at its own learning rate")
    budget = args.budget_minutes if args.budget_minutes is not None or args.steps is not None else 10.0
    result = run_compare(args.model, args.data, args.out, budget_minutes=budget, steps=args.steps,
                         batch_size=args.batch_size or 4, max_seq_len=args.max_seq_len or 256,
                         max_eval_tokens=args.max_eval_tokens or 1000, seed=args.seed, threads=args.threads,
                         methods=methods, precision=args.precision, drift_tokens=args.drift_tokens or 48)
    base = result["base"]["perplexity"]["overall"]["ppl"]
    print(f"{'method':>10}  {'trainable':>12}  {'%':>7}  {'ppl':>7}  {'drift':>7}  {'wall s':>7}  {'peak MB':>8}  "
          f"{'size MB':>8}")
    print(f"{'base':>10}  {0:>12,}  {0:>7.3f}  {base:>7.2f}")
    for r in result["runs"]:
        print(f"{r['name']:>10}  {r['trainable']:>12,}  {r['trainable_pct']:>7.3f}  "
              f"{r['perplexity']['overall']['ppl']:>7.2f}  {r['drift_pct']:>+6.1f}%  {r['train_seconds']:>7.0f}  "
              f"{r['peak_rss_mb']:>8.0f}  {r['saved_bytes'] / 2**20:>8.1f}")
    print(f"report: {Path(args.out) / 'compare.html'}")
    return 0


def cmd_compare_classify(args: argparse.Namespace, methods: tuple) -> int:
    """`lorakit compare --task classify`: the table, one line per method, and the report's path."""
    from lorakit.eval.compare_classify import format_table, run_compare_classify

    for flag, value in (("--max-eval-tokens", args.max_eval_tokens), ("--drift-tokens", args.drift_tokens)):
        if value is not None:
            raise LorakitError(f"{flag} applies to --task lm; --task classify scores every test example")
    result = run_compare_classify(args.model, args.data, args.out, epochs=args.epochs, steps=args.steps,
                                  budget_minutes=args.budget_minutes, methods=methods, lr=args.lr,
                                  batch_size=args.batch_size, max_seq_len=args.max_seq_len, seed=args.seed,
                                  threads=args.threads, precision=args.precision)
    print(format_table(result))
    print(f"report: {Path(args.out) / 'compare.html'}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Handler of `lorakit merge`."""
    from lorakit.merge import merge_to_dir

    out = merge_to_dir(args.model, args.adapter, args.out, args.dtype, force=args.force, quantize=args.quantize)
    print(f"merged model written to {out} ({args.dtype}); load it with AutoModelForCausalLM.from_pretrained")
    return 0
