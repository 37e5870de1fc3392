"""`lorakit data prepare | lint | gutenberg` sub-commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorakit.argtypes import (checked, fraction, nonneg_float, nonneg_int, one_line_errors, open_fraction,
                              positive_float, positive_int)
from lorakit.data.download import MIRROR_ENV
from lorakit.data.samples import FORMATS
from lorakit.errors import LorakitError

BALANCE = ("none", "downsample", "weights")  # lorakit.data.classify.BALANCE, kept here so --help stays light


prose_seq_len = checked(int, lambda v: v >= 64, "an integer of at least 64 for prose passages (512 is typical)")


def _load_tokenizer(model: str | None):
    from lorakit.models import load_tokenizer

    return load_tokenizer(model)


# The heavy modules (datasketch, torch via the tokenizer) load only when a command runs, so
# `lorakit --help` and other sub-commands stay fast.
def _prepare(args: argparse.Namespace) -> int:
    from lorakit.data.prepare import check_options, check_out, prepare_dataset
    from lorakit.data.summary import format_prepare_summary

    if args.task == "classify":
        return _prepare_classify(args)
    if args.label is not None or args.balance is not None:
        raise LorakitError(f"{'--label' if args.label is not None else '--balance'} applies to --task classify")
    args.format = args.format or "text"
    # options that depend on each other, and where --out is, are checked before the tokenizer loads
    check_options(args.format, args.seq_len, args.min_tokens, args.val_fraction, args.test_fraction)
    check_out(Path(args.out).expanduser(), args.input, args.overwrite)
    tokenizer = _load_tokenizer(args.model)
    report = prepare_dataset(
        args.input, args.out, tokenizer, fmt=args.format, seq_len=args.seq_len, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, split_by=args.split_by, seed=args.seed, skip_bad=args.skip_bad,
        min_tokens=args.min_tokens, overwrite=args.overwrite, keep_front_matter=args.keep_front_matter,
        model=args.model,
    )
    print(format_prepare_summary(report))
    return 0


def _prepare_classify(args: argparse.Namespace) -> int:
    from lorakit.data.classify import check_classify_options, format_classify_summary, prepare_classify
    from lorakit.data.prepare import check_out

    if args.format is not None:
        raise LorakitError("--format is for --task lm; a classify dataset holds plain labelled passages")
    balance = args.balance or "none"
    check_classify_options(args.seq_len, args.min_tokens, args.val_fraction, args.test_fraction, balance,
                           args.split_by)
    check_out(Path(args.out).expanduser(), args.input, args.overwrite)
    tokenizer = _load_tokenizer(args.model)
    report = prepare_classify(
        args.input, args.out, tokenizer, label=args.label, seq_len=args.seq_len, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, split_by=args.split_by, balance=balance, seed=args.seed,
        skip_bad=args.skip_bad, min_tokens=args.min_tokens, overwrite=args.overwrite,
        keep_front_matter=args.keep_front_matter, model=args.model,
    )
    print(format_classify_summary(report))
    return 0


def _lint(args: argparse.Namespace) -> int:
    from lorakit.data.lint import lint_dataset
    from lorakit.data.summary import format_lint_summary

    tokenizer = _load_tokenizer(args.model) if args.model else None
    report = lint_dataset(args.path, tokenizer)
    print(json.dumps(report, ensure_ascii=False, indent=1) if args.json else format_lint_summary(report))
    return 0 if report["ok"] else 1


def _gutenberg(args: argparse.Namespace) -> int:
    from lorakit.data.download import download_ebooks

    results = download_ebooks(args.id, args.out, mirror=args.mirror, retries=args.retries,
                              backoff=args.backoff, timeout=args.timeout, use_cache=not args.no_cache)
    for r in results:
        print(f"{r['file']}  ({'cached' if r['cached'] else 'downloaded'}, {r['bytes']:,} bytes)")
    print(f"next: lorakit data prepare --input {args.out} --out DATASET_DIR")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from lorakit.data.replay import add_replay, load_prompts, replay_rows
    from lorakit.models import load_model

    prompts = load_prompts(args.prompts)  # a bad prompts file fails before the model loads
    model, tokenizer = load_model(args.model)
    record = add_replay(args.data, replay_rows(model, tokenizer, prompts, args.max_new_tokens), args.share)
    print(f"added {record['prompts']} base answers x {record['repeats']} to {args.data}/train.jsonl: "
          f"{record['actual_share']:.1%} of its tokens (details in replay.json); train with --mask-prompt")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lorakit data` to the top-level parser."""
    p = sub.add_parser("data", help="prepare, lint and download datasets")

    def no_action(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_action)
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    prep = data_sub.add_parser("prepare", help="books or JSONL -> clean, deduplicated train/valid/test JSONL",
                               description="Clean, filter, deduplicate, chunk and split text into a dataset; "
                                           "writes DIR/{train,valid,test}.jsonl and DIR/report.json.")
    one_line_errors(prep)
    prep.add_argument("--input", nargs="+", required=True, metavar="PATH",
                      help=".txt / .jsonl files (optionally .gz) or folders of them")
    prep.add_argument("--out", required=True, metavar="DIR",
                      help="output folder (written atomically); may sit inside an input folder, "
                           "never be or hold an input")
    prep.add_argument("--model", default=None,
                      help="model whose tokenizer measures lengths (default: smollm2-135m-instruct)")
    prep.add_argument("--task", default="lm", choices=("lm", "classify"),
                      help="lm: samples to train a language model on (default); classify: labelled passages")
    prep.add_argument("--format", default=None, choices=FORMATS,
                      help="--task lm: text: plain continuation (default); instruct: prompt + completion; "
                           "chat: chat template")
    prep.add_argument("--label", default=None, metavar="FIELD",
                      help="--task classify: the field holding the class: books' metadata (author, book, title, "
                           "translator, gutenberg_id; default author) or JSONL records' (default label)")
    prep.add_argument("--balance", default=None, choices=BALANCE,
                      help="--task classify: none (default); downsample: train cut to its smallest class; "
                           "weights: per-class loss weights in report.json")
    prep.add_argument("--seq-len", type=prose_seq_len, default=512, help="maximum tokens per sample (default 512)")
    prep.add_argument("--val-fraction", type=fraction, default=0.05, help="share of tokens for valid (default 0.05)")
    prep.add_argument("--test-fraction", type=fraction, default=0.05, help="share of tokens for test (default 0.05)")
    prep.add_argument("--split-by", default="book", choices=("book", "sample"),
                      help="book: whole books per split, no passage of a test book in train (default)")
    prep.add_argument("--seed", type=int, default=0, help="seed for splits and prompt choice")
    prep.add_argument("--min-tokens", type=nonneg_int, default=32, help="drop passages shorter than this (default 32)")
    prep.add_argument("--skip-bad", action="store_true",
                      help="skip unreadable files and bad JSONL lines (counted in the report) instead of stopping")
    prep.add_argument("--overwrite", action="store_true",
                      help="replace an existing dataset in --out (refused if the folder holds other files)")
    prep.add_argument("--keep-front-matter", action="store_true",
                      help="keep prefaces and introductions of Gutenberg books (dropped by default)")
    prep.set_defaults(func=_prepare)

    lint = data_sub.add_parser("lint", help="re-check a dataset folder (or one JSONL file)",
                               description="Counts, lengths, duplicates, formatting, balance, templates and "
                                           "leakage; exits 1 when the dataset cannot be trained on.")
    one_line_errors(lint)
    lint.add_argument("path", metavar="DIR", help="dataset folder (train/valid/test.jsonl) or a .jsonl file")
    lint.add_argument("--model", default=None, help="check input_ids against this model's tokenizer")
    lint.add_argument("--json", action="store_true", help="print the full report as JSON")
    lint.set_defaults(func=_lint)

    rep = data_sub.add_parser("replay", help="mix the base model's own answers to everyday requests into train",
                              description="Generate the base model's greedy answers to everyday requests and add "
                                          "them to DIR/train.jsonl as a small share of its tokens, so a style "
                                          "adapter keeps the base's general behaviour (lower drift).")
    one_line_errors(rep)
    rep.add_argument("--data", required=True, metavar="DIR", help="dataset folder from `lorakit data prepare`")
    rep.add_argument("--model", default=None, help="the base model the adapter will train on (default smollm2)")
    rep.add_argument("--share", type=open_fraction, default=0.1, help="share of train tokens for replay (default 0.1)")
    rep.add_argument("--prompts", default=None, metavar="FILE",
                     help="one request per line (default: 64 packaged everyday requests)")
    rep.add_argument("--max-new-tokens", type=positive_int, default=64, help="answer length cap (default 64)")
    rep.set_defaults(func=_replay)

    gut = data_sub.add_parser("gutenberg", help="download Project Gutenberg ebooks by id (cached)",
                              description=f"Download plain-text ebooks into DIR; the mirror comes from --mirror, "
                                          f"${MIRROR_ENV}, or www.gutenberg.org.")
    one_line_errors(gut)
    gut.add_argument("--id", nargs="+", type=positive_int, required=True, metavar="N", help="ebook ids, e.g. 2600 1399")
    gut.add_argument("--out", required=True, metavar="DIR", help="folder for pg<id>.txt files")
    gut.add_argument("--mirror", default=None, help=f"mirror base URL (default ${MIRROR_ENV} or gutenberg.org)")
    gut.add_argument("--retries", type=nonneg_int, default=3, help="retries on server errors and timeouts (default 3)")
    gut.add_argument("--backoff", type=nonneg_float, default=1.0, help="first retry delay in seconds, doubling (default 1)")
    gut.add_argument("--timeout", type=positive_float, default=30.0, help="seconds per request (default 30)")
    gut.add_argument("--no-cache", action="store_true", help="download again even if cached")
    gut.set_defaults(func=_gutenberg)
