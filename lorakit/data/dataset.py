"""Read prepared dataset splits (JSONL), strictly for training or leniently for linting."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.errors import LorakitError

SPLIT_FILES = {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.jsonl"}
REQUIRED = ("text", "prompt", "completion", "input_ids", "prompt_len", "meta")


def check_sample(obj: object) -> tuple[list[str], list[str]]:
    """Problems with one sample: (errors that make it unusable, schema gaps a trainer cannot fill).

    Hand-written samples may carry only `text`, `prompt`/`completion` or `messages`; those
    are usable for linting but lack the tokenized fields (`input_ids`, `prompt_len`).
    """
    if not isinstance(obj, dict):
        return [f"not a JSON object ({type(obj).__name__})"], []
    errors: list[str] = []
    has_text = isinstance(obj.get("text"), str)
    has_pair = isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str)
    has_chat = isinstance(obj.get("messages"), list)
    if not (has_text or has_pair or has_chat):
        errors.append("no 'text', 'prompt'/'completion' or 'messages' field")
    gaps = [key for key in REQUIRED if key not in obj]
    ids = obj.get("input_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
        errors.append("'input_ids' must be a list of integers")
        ids = None
    plen = obj.get("prompt_len")
    if plen is not None and (not isinstance(plen, int) or plen < 0 or (ids is not None and plen > len(ids))):
        errors.append(f"'prompt_len' {plen!r} is not between 0 and the number of input_ids")
    if has_text and has_pair and obj["text"] != obj["prompt"] + obj["completion"]:
        errors.append("'text' is not 'prompt' + 'completion'")
    if "meta" in obj and not isinstance(obj["meta"], dict):
        errors.append("'meta' must be an object")
    return errors, gaps


def read_jsonl_lenient(path: str | Path) -> tuple[list[dict], list[dict], int]:
    """All parsable samples of a JSONL file, the errors found (file, line, message), and gap count."""
    path = Path(path)
    samples: list[dict] = []
    errors: list[dict] = []
    gaps = 0
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [{"file": str(path), "line": None, "message": f"not UTF-8 ({exc.reason} at byte {exc.start})"}], 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append({"file": str(path), "line": lineno, "message": f"not valid JSON ({exc.msg})"})
            continue
        problems, missing = check_sample(obj)
        if problems:
            errors.append({"file": str(path), "line": lineno, "message": "; ".join(problems)})
            continue
        gaps += bool(missing)
        obj["_line"] = lineno
        samples.append(obj)
    return samples, errors, gaps


def load_jsonl_split(path: str | Path) -> list[dict]:
    """Load one prepared split for training; any bad line raises LorakitError naming file:line.

    Every sample has the fields of the schema in `lorakit.data` (text, prompt, completion,
    input_ids, prompt_len, meta; messages for chat).
    """
    path = Path(path)
    if not path.is_file():
        raise LorakitError(f"{path}: no such dataset file; run `lorakit data prepare` first")
    samples: list[dict] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LorakitError(f"{path}:{lineno}: not valid JSON ({exc.msg}); re-run `lorakit data prepare` "
                                   "or fix the line") from None
            problems, missing = check_sample(obj)
            if problems or missing:
                what = "; ".join(problems + ([f"missing {', '.join(missing)}"] if missing else []))
                raise LorakitError(f"{path}:{lineno}: {what}; run `lorakit data lint {path.parent}` for details")
            samples.append(obj)
    return samples
