"""`lorakit` sub-commands of lorakit.infer (placeholder until they land)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's sub-commands to the top-level parser."""
