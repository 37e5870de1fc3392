"""The `lorakit` command line: one sub-command per pipeline stage.

Every sub-command lives next to the code it drives and exposes
``register(subparsers)``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lorakit.errors import LorakitError, one_line

DEBUG_ENV = "LORAKIT_DEBUG"  # set to 1: an unexpected exception shows its traceback


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands registered from their packages)."""
    from lorakit import demo
    from lorakit.adapters import cli as adapters_cli
    from lorakit.data import cli as data_cli
    from lorakit.eval import cli as eval_cli
    from lorakit.export import cli as export_cli
    from lorakit.infer import cli as infer_cli
    from lorakit.plan import cli as plan_cli
    from lorakit.train import cli as train_cli

    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA fine-tuning of small language models, CPU first.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    adapters_cli.register(sub)
    data_cli.register(sub)
    infer_cli.register(sub)
    plan_cli.register(sub)
    train_cli.register(sub)
    eval_cli.register(sub)
    export_cli.register(sub)
    demo.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except LorakitError as exc:
        print(f"lorakit: error: {one_line(exc, limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lorakit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a defect, not bad input: one line, the traceback on request
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"lorakit: internal error: {type(exc).__name__}: {one_line(exc)}; this is a bug in lorakit, "
              f"not in your input: rerun with {DEBUG_ENV}=1 for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
