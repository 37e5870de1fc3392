"""argparse `type=` checks and one-line usage errors, shared by every subcommand.

A bad number stops at parse time, in one line, before any model, tokenizer or config loads.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


def _number(kind: type, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        need = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def checked(kind: type, ok: Callable[[float], bool], need: str) -> Callable[[str], float]:
    """An argparse type: a finite `kind` (int or float) for which `ok` holds, else "must be `need`"."""
    def parse(text: str) -> float:
        value = _number(kind, text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
        return value

    parse.__name__ = need  # argparse names the type in some messages
    return parse


def int_at_least(low: int, high: int | None = None) -> Callable[[str], float]:
    """An argparse type: an integer in [low, high] (no upper bound without `high`)."""
    need = f"between {low} and {high}" if high is not None else f"at least {low}"
    return checked(int, lambda v: v >= low and (high is None or v <= high), need)


positive_int = checked(int, lambda v: v > 0, "a positive integer")
nonneg_int = checked(int, lambda v: v >= 0, "an integer of at least 0")
finite_float = checked(float, lambda v: True, "a finite number")
positive_float = checked(float, lambda v: v > 0, "a positive number")
nonneg_float = checked(float, lambda v: v >= 0, "a number of at least 0")
fraction = checked(float, lambda v: 0 <= v < 1, "a fraction of at least 0 and below 1")
open_fraction = checked(float, lambda v: 0 < v < 1, "a fraction above 0 and below 1")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make `parser` report a bad or missing option in one line (argparse prints its usage first)."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message}; see `{parser.prog} --help`\n")

    parser.error = error  # type: ignore[method-assign]
    return parser
