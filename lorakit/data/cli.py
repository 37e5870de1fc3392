"""`lorakit data ...` sub-commands (placeholder until the data pipeline lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lorakit data` to the top-level parser."""
    p = sub.add_parser("data", help="prepare, lint and download datasets")
    p.set_defaults(func=lambda args: p.print_help())
