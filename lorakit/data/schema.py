"""The prepared dataset's row format, and the one reader and one writer of its JSONL splits.

`lorakit data prepare` writes ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl``: one JSON
object per line (`PreparedRow`). Everything that reads them (training, evaluation, lint,
replay) goes through `read_rows`, so a bad line gets the same verdict and the same one-line
message everywhere: the file, the line number and the fix. `write_rows` writes a split
atomically and refuses a row that `read_rows` would refuse.

What a caller needs of a row is its `Need`: lint needs readable content, evaluation token ids,
training token ids or a text to tokenize, a freshly prepared split every field.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from lorakit.atomic import atomic_write
from lorakit.errors import LorakitError

SPLIT_FILES = {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.jsonl"}
REQUIRED = ("text", "prompt", "completion", "input_ids", "prompt_len", "meta")
STRINGS = ("text", "prompt", "completion")

Need = Literal["any", "content", "tokens", "text_or_tokens", "prepared"]
"""What a row must hold beyond well-typed fields: nothing; text, prompt/completion or messages;
input_ids; input_ids or a text to tokenize; every field in REQUIRED."""


class PreparedRow(TypedDict, total=False):
    """One line of a split, as `lorakit data prepare` writes it (see `lorakit.data`)."""

    text: str  # prompt + completion: the full string the model trains on
    prompt: str  # "" for the text format
    completion: str  # the part the loss is computed on
    input_ids: list[int]  # ids(prompt) + ids(completion)
    prompt_len: int  # leading input_ids that are prompt, 0 <= prompt_len <= len(input_ids)
    meta: dict[str, Any]  # book, author, title, translator, gutenberg_id, task, source
    messages: list[dict[str, str]]  # chat format only: [{"role", "content"}, ...]
    task: str  # "classify" on classification rows (`lorakit data prepare --task classify`); absent otherwise
    label: str  # classification rows: the class name, one of report.json's "classes" (its index is the id)


@dataclass
class Sample:
    """Token ids of one training example and how many leading ids are prompt."""

    ids: list[int]
    prompt_len: int = 0


@dataclass(frozen=True)
class BadLine:
    """A line no caller can use: where it is and what is wrong with it."""

    file: Path
    line: int
    problem: str

    @property
    def message(self) -> str:
        """One line: file, line number, problem and fix."""
        return f"{where(self.file, self.line)}: {self.problem}; {fix(self.file)}"


@dataclass
class Rows:
    """What `read_rows` read: usable rows with their line numbers, and (lenient) the bad lines."""

    path: Path
    rows: list[PreparedRow] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


def where(path: str | Path, line: int) -> str:
    """``data/train.jsonl line 12``: how every message names a line."""
    return f"{path} line {line}"


def fix(path: str | Path) -> str:
    """The fix for a bad line of `path`."""
    return f"fix the line or re-run `lorakit data prepare --out {Path(path).parent}`"


def split_path(data_dir: str | Path, split: str) -> Path:
    """``DATA/{split}.jsonl``; refuses a missing dataset directory."""
    if not Path(data_dir).is_dir():
        raise LorakitError(f"{data_dir}: dataset directory not found; run `lorakit data prepare --out {data_dir}`")
    return Path(data_dir) / SPLIT_FILES.get(split, f"{split}.jsonl")


# token ids become int64 tensors: a negative id or one past int64 cannot be one
_MAX_ID = 2**63 - 1


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= _MAX_ID for i in value)


def _has_content(obj: dict) -> bool:
    return (isinstance(obj.get("text"), str) or isinstance(obj.get("messages"), list)
            or (isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str)))


def missing_fields(obj: dict) -> list[str]:
    """The REQUIRED fields `obj` lacks (a hand-written row may lack the tokenized ones)."""
    return [key for key in REQUIRED if key not in obj]


def row_problems(obj: object, need: Need = "any") -> list[str]:
    """What makes `obj` unusable as a row for a caller with `need`; empty when it is fine.

    Every need checks the types of the fields present and prompt_len against input_ids;
    "content" and "prepared" also check that text is prompt + completion.
    """
    if not isinstance(obj, dict):
        return [f"not a JSON object ({type(obj).__name__})"]
    errors = [f"'{key}' must be a string" for key in STRINGS if key in obj and not isinstance(obj[key], str)]
    ids = obj.get("input_ids")
    if "input_ids" in obj and not _int_list(ids):
        errors.append("'input_ids' must be a list of integers from 0 (token ids)")
        ids = None
    if "prompt_len" in obj:
        plen = obj["prompt_len"]
        if not isinstance(plen, int) or isinstance(plen, bool) or plen < 0 or (ids is not None and plen > len(ids)):
            errors.append(f"'prompt_len' {plen!r} is not between 0 and the number of input_ids")
    if "task" in obj and not isinstance(obj["task"], str):
        errors.append("'task' must be a string")
    if obj.get("task") == "classify" and "label" in obj and not isinstance(obj["label"], str):
        errors.append("'label' must be a string (the class name)")  # other rows may carry labels of their own
    if "meta" in obj and not isinstance(obj["meta"], dict):
        errors.append("'meta' must be an object")
    if "messages" in obj and not isinstance(obj["messages"], list):
        errors.append("'messages' must be a list")
    if need in ("content", "prepared"):  # the text fields are what lint reads; training reads the ids
        if not _has_content(obj):
            errors.append("no 'text', 'prompt'/'completion' or 'messages' field")
        elif all(isinstance(obj.get(key), str) for key in STRINGS) and obj["text"] != obj["prompt"] + obj["completion"]:
            errors.append("'text' is not 'prompt' + 'completion'")
    if need == "prepared" and missing_fields(obj):
        errors.append(f"missing {', '.join(missing_fields(obj))}")
    elif need == "prepared" and obj.get("task") == "classify" and "label" not in obj:
        errors.append("missing label (a classification row)")
    elif need == "tokens" and "input_ids" not in obj:
        errors.append("missing 'input_ids'")
    elif need == "text_or_tokens" and "input_ids" not in obj and not isinstance(obj.get("text"), str):
        errors.append("missing 'input_ids' (or a 'text' to tokenize)")
    return errors


def _parse(raw: bytes, need: Need) -> tuple[object, str | None]:
    """(row, None) or (None, problem) for one line's bytes; (None, None) for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
    if not text.strip():
        return None, None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "not JSON this reader can hold (nested too deep)"
    except ValueError:  # Python's int-from-string limit
        return None, "not JSON this reader can hold (a number with too many digits)"
    problems = row_problems(obj, need)
    return (None, "; ".join(problems)) if problems else (obj, None)


def read_rows(path: str | Path, need: Need = "tokens", *, lenient: bool = False, allow_empty: bool = True) -> Rows:
    """Read one split. A missing file, and without `allow_empty` a file with no rows, raise LorakitError.

    A bad line (not UTF-8, not JSON, not an object, a field missing or of the wrong type for
    `need`) raises LorakitError with `BadLine.message`, or with `lenient` is skipped and listed
    in ``bad``. Blank lines are skipped; a UTF-8 BOM and CRLF line ends are accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise LorakitError(f"{path}: not found; run `lorakit data prepare --out {path.parent}` first "
                           f"(it writes {path.name})")
    out = Rows(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            obj, problem = _parse(raw.rstrip(b"\r\n"), need)
            if problem is not None:
                bad = BadLine(path, lineno, problem)
                if not lenient:
                    raise LorakitError(bad.message)
                out.bad.append(bad)
            elif obj is not None:
                out.rows.append(obj)
                out.lines.append(lineno)
    if not allow_empty and not out.rows and not out.bad:
        raise LorakitError(f"{path}: empty (no samples); re-run `lorakit data prepare --out {path.parent}`")
    return out


def dumps_row(row: PreparedRow) -> str:
    """One row as one line of JSON (UTF-8, no ASCII escapes; never contains a newline)."""
    return json.dumps(row, ensure_ascii=False)


def write_rows(path: str | Path, rows: Iterable[PreparedRow]) -> Path:
    """Write a split atomically (temp file + rename): readers see the old file or the whole new one.

    Refuses, before writing anything, a row that `read_rows` would refuse.
    """
    path = Path(path)
    lines: list[str] = []
    for i, row in enumerate(rows, start=1):
        problems = row_problems(row)
        if problems:
            raise LorakitError(f"{path}: row {i} would be unreadable ({'; '.join(problems)}); nothing written")
        lines.append(dumps_row(row) + "\n")
    return atomic_write(path, "".join(lines))


def sample_of(row: PreparedRow, tokenizer: Callable[[str], Any] | None = None) -> Sample:
    """The tokenized sample of a row read with need "tokens" (or "text_or_tokens" and a tokenizer)."""
    if "input_ids" in row:
        return Sample(list(row["input_ids"]), row.get("prompt_len", 0))
    if tokenizer is not None and isinstance(row.get("text"), str):
        return Sample(list(tokenizer(row["text"])["input_ids"]), 0)
    raise ValueError("a row without 'input_ids' needs a tokenizer and a 'text'")
