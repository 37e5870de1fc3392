"""`lorakit train`: flags generated from `TrainConfig`, so help text and defaults live in one place."""

from __future__ import annotations

import argparse

from lorakit.argtypes import one_line_errors
from lorakit.train.config import AUTO_SWITCHES, NUMBERS, TrainConfig

SHORT = {"model": ["-m"], "rank": ["-r"]}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lorakit train` to the top-level parser."""
    p = one_line_errors(sub.add_parser(
        "train", help="train a LoRA/DoRA adapter (or full / head-only baselines)",
        description="CLI flags > YAML (-c) > defaults; the resolved config is written to OUT. An OUT holding a "
                    "previous run is refused: continue it with --resume auto, or choose a new --out."))
    p.add_argument("-c", "--config", default=None, help="YAML file of settings (same names as the flags)")
    for name, default, help_text in TrainConfig.cli_fields():
        flag = "--" + name.replace("_", "-")
        names = [flag, *SHORT.get(name, [])]
        # SUPPRESS: only flags the user typed override the YAML file
        if name == "resume":
            p.add_argument(flag, nargs="?", const="auto", default=argparse.SUPPRESS,
                           help=f"{help_text} (bare --resume: 'auto')")
        elif name in AUTO_SWITCHES:
            p.add_argument(*names, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{help_text} (the run's log says what auto chose)")
        elif isinstance(default, bool):
            p.add_argument(*names, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{help_text} (default: {default})")
        else:
            kind = NUMBERS[name][0] if name in NUMBERS else str
            p.add_argument(*names, type=kind, default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from lorakit.train.defaults import Choice
    from lorakit.train.run import run_training

    given = {k: v for k, v in vars(args).items() if k not in ("func", "config", "command", "verbose")}
    cfg = TrainConfig.resolve(args.config, given)
    summary = run_training(cfg)
    unit = "examples" if cfg.task == "classify" else "tokens"  # the loss's units: one per example when classifying
    print(f"trained {summary['steps']} steps on {summary['tokens']:,} {unit}; output in {cfg.out}")
    for choice in summary["defaults"]:  # what each setting left at auto chose, and how to say otherwise
        print(f"  default {Choice(**choice).format()}")
    return 0
