"""Read a prepared dataset split strictly (every field `lorakit data prepare` writes).

The row format, its checks and its messages live in `lorakit.data.schema`; this is the
strict entry point named in `lorakit.data`'s docstring.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.data.schema import SPLIT_FILES, REQUIRED, PreparedRow, read_rows

__all__ = ["REQUIRED", "SPLIT_FILES", "load_jsonl_split"]


def load_jsonl_split(path: str | Path) -> list[PreparedRow]:
    """Load one prepared split; a missing file or any bad line raises LorakitError naming file and line.

    Every row has the fields in `lorakit.data.schema.REQUIRED` (messages too for chat).
    """
    return read_rows(path, "prepared").rows
