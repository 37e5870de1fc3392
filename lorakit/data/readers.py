"""Read raw inputs: .txt books and .jsonl records (optionally .gz), in any common encoding.

Every failure is a `BadInputError` naming the file (and line) and the fix, so the
pipeline can either stop with one clear line or, with ``--skip-bad``, count and go on.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lorakit.errors import LorakitError

TEXT_SUFFIXES = (".txt", ".text")
JSONL_SUFFIXES = (".jsonl",)
SKIP_HINT = "or pass --skip-bad to skip it"


class BadInputError(LorakitError):
    """An input file or line that cannot be used; `reason` is a short machine-readable code."""

    def __init__(self, message: str, *, file: str, reason: str, line: int | None = None):
        super().__init__(message)
        self.file, self.reason, self.line = file, reason, line

    def as_dict(self) -> dict:
        """The report entry for this bad input."""
        return {"file": self.file, "line": self.line, "reason": self.reason, "message": str(self)}


@dataclass
class SourceFile:
    """One decoded input file."""

    path: Path
    text: str
    encoding: str  # utf-8 | utf-16 | cp1252 | latin-1
    bom: bool
    newlines: str  # lf | crlf | cr | mixed | none
    compressed: bool

    @property
    def kind(self) -> str:
        """'jsonl' or 'text', from the file name (ignoring a .gz suffix)."""
        return "jsonl" if _base_suffix(self.path) in JSONL_SUFFIXES else "text"


@dataclass
class Record:
    """One JSONL line: free text, a prompt/completion pair, or a chat conversation."""

    kind: str  # text | pair | chat
    source: str
    line: int
    text: str = ""
    prompt: str = ""
    completion: str = ""
    messages: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def is_supported(path: Path) -> bool:
    """True for .txt/.text/.jsonl files, plain or gzipped."""
    return _base_suffix(path) in TEXT_SUFFIXES + JSONL_SUFFIXES


def expand_inputs(paths: Iterable[str | Path], exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Files to read (folders searched recursively, sorted) and files ignored for their type.

    Files under `exclude` (the output folder, when it sits inside an input folder) are skipped.
    """
    files: list[Path] = []
    ignored: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in child.relative_to(path).parts):
                    continue  # hidden files and folders (.git, editor swap files)
                if skip is not None and child.resolve().is_relative_to(skip):
                    continue  # a dataset written by an earlier run is not input
                (files if is_supported(child) else ignored).append(child)
        elif path.is_file():
            if not is_supported(path):
                raise BadInputError(
                    f"{path}: unsupported file type '{''.join(path.suffixes) or '(none)'}'; "
                    "pass .txt or .jsonl files (optionally .gz) or a folder of them",
                    file=str(path), reason="unsupported_type",
                )
            files.append(path)
        else:
            raise LorakitError(f"{path}: no such file or folder; check the --input path")
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, ignored


def decode_bytes(data: bytes, name: str) -> tuple[str, str, bool]:
    """Decode file bytes: returns (text, encoding, had_bom). Raises BadInputError for binary data."""
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8", True
        except UnicodeDecodeError as exc:
            raise BadInputError(
                f"{name}: starts with a UTF-8 byte-order mark but is not valid UTF-8 (byte {exc.start + 3}); "
                f"re-save it as UTF-8, {SKIP_HINT}", file=name, reason="bad_encoding",
            ) from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16", True
        except UnicodeDecodeError:
            raise BadInputError(
                f"{name}: has a UTF-16 byte-order mark but does not decode as UTF-16; re-save it as UTF-8, {SKIP_HINT}",
                file=name, reason="bad_encoding",
            ) from None
    nul = data.find(b"\x00", 0, 65536)
    if nul >= 0:
        raise BadInputError(
            f"{name}: looks like a binary file, not text (NUL byte at offset {nul}); "
            f"pass .txt or .jsonl text files, {SKIP_HINT}", file=name, reason="binary",
        )
    try:
        return data.decode("utf-8"), "utf-8", False
    except UnicodeDecodeError:
        pass
    # Not UTF-8: old Gutenberg files are ISO-8859-1; cp1252 is its superset with curly quotes.
    for encoding in ("cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\n\r\t\f" or 0x7F <= ord(ch) < 0xA0)
        if controls > max(3, len(text) // 200):
            raise BadInputError(
                f"{name}: cannot tell the text encoding (not UTF-8, and as Latin-1 {controls} characters are "
                f"control codes); re-save the file as UTF-8, {SKIP_HINT}", file=name, reason="bad_encoding",
            )
        return text, encoding, False
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def _newline_style(text: str) -> str:
    crlf = text.count("\r\n")
    cr = text.count("\r") - crlf
    lf = text.count("\n") - crlf
    styles = [name for name, n in (("crlf", crlf), ("lf", lf), ("cr", cr)) if n]
    return styles[0] if len(styles) == 1 else ("none" if not styles else "mixed")


# The most one input file may hold, decompressed: a book is a few MB of text, so a file past this
# is not prose to clean by hand, or a gzip bomb; refused before it fills memory.
MAX_SOURCE_BYTES = 256 << 20


def _too_large(name: str) -> BadInputError:
    return BadInputError(f"{name}: holds more than {MAX_SOURCE_BYTES >> 20} MiB of text (decompressed); split it "
                         f"into smaller files, {SKIP_HINT}", file=name, reason="too_large")


def _gunzip_bounded(path: Path, name: str) -> bytes:
    """The decompressed bytes of `path`, read in blocks and refused once past MAX_SOURCE_BYTES."""
    blocks, total = [], 0
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                total += len(block)
                if total > MAX_SOURCE_BYTES:
                    raise _too_large(name)
                blocks.append(block)
    except (OSError, EOFError, zlib.error):
        raise BadInputError(f"{name}: is not a valid gzip file; re-compress it with gzip, {SKIP_HINT}",
                            file=name, reason="bad_gzip") from None
    return b"".join(blocks)


def read_source(path: str | Path) -> SourceFile:
    """Read and decode one input file; line endings are normalised to LF."""
    path = Path(path)
    name = str(path)
    compressed = path.suffix.lower() == ".gz"
    try:
        if compressed:
            data = _gunzip_bounded(path, name)
        elif path.stat().st_size > MAX_SOURCE_BYTES:
            raise _too_large(name)
        else:
            data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{name}: cannot read ({exc.strerror}); check permissions, {SKIP_HINT}",
                            file=name, reason="unreadable") from None
    if not data.strip():
        raise BadInputError(f"{name}: file is empty; remove it from the inputs, {SKIP_HINT}",
                            file=name, reason="empty")
    text, encoding, bom = decode_bytes(data, name)
    newlines = _newline_style(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise BadInputError(f"{name}: file has no text; remove it from the inputs, {SKIP_HINT}",
                            file=name, reason="empty")
    return SourceFile(path, text, encoding, bom, newlines, compressed)


_META_KEYS = ("book", "author", "title", "translator", "gutenberg_id", "task")


def _record_meta(obj: dict) -> dict:
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), dict) else {}
    for key in _META_KEYS:
        if key in obj and key not in meta:
            meta[key] = obj[key]
    return meta


def parse_record(obj: object, name: str, lineno: int) -> Record:
    """Turn one decoded JSONL object into a Record, or raise BadInputError naming file:line."""
    where = f"{name}:{lineno}"
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: each line must be a JSON object, got {type(obj).__name__}; "
                            "fix the line or pass --skip-bad", file=name, line=lineno, reason="not_object")

    def need_str(key: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str):
            raise BadInputError(f"{where}: field '{key}' must be a string, got {type(value).__name__}; "
                                "fix the line or pass --skip-bad", file=name, line=lineno, reason="bad_field")
        return value

    meta = _record_meta(obj)
    if "messages" in obj:
        msgs = obj["messages"]
        ok = isinstance(msgs, list) and len(msgs) >= 2 and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        )
        if not ok or msgs[-1]["role"] != "assistant":
            raise BadInputError(
                f"{where}: 'messages' must be a list of {{role, content}} objects ending with an assistant turn; "
                "fix the line or pass --skip-bad", file=name, line=lineno, reason="bad_messages",
            )
        messages = [{"role": m["role"], "content": m["content"]} for m in msgs]
        return Record("chat", name, lineno, messages=messages, meta=meta)
    if "prompt" in obj or "completion" in obj:
        if "prompt" not in obj or "completion" not in obj:
            present, missing = ("prompt", "completion") if "prompt" in obj else ("completion", "prompt")
            raise BadInputError(f"{where}: has '{present}' but no '{missing}' field; add it or pass --skip-bad",
                                file=name, line=lineno, reason="missing_field")
        return Record("pair", name, lineno, prompt=need_str("prompt"), completion=need_str("completion"), meta=meta)
    if "text" in obj:
        return Record("text", name, lineno, text=need_str("text"), meta=meta)
    raise BadInputError(
        f"{where}: no 'text', 'prompt'/'completion' or 'messages' field; each line needs one of them "
        "(fix the line or pass --skip-bad)", file=name, line=lineno, reason="missing_field",
    )


def json_problem(exc: ValueError | RecursionError) -> str:
    """What `json.loads` refused, in words: JSON that is malformed, nested too deep, or a number too long."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return "a number with too many digits"  # Python's int-from-string limit


def parse_jsonl(src: SourceFile, *, skip_bad: bool = False, bad: list[dict] | None = None) -> list[Record]:
    """Parse a JSONL source; bad lines raise, or with `skip_bad` are appended to `bad` and skipped."""
    records: list[Record] = []
    name = str(src.path)
    for lineno, line in enumerate(src.text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise BadInputError(
                    f"{name}:{lineno}: not valid JSON ({json_problem(exc)}); "
                    "fix the line or pass --skip-bad to skip bad lines",
                    file=name, line=lineno, reason="bad_json",
                ) from None
            records.append(parse_record(obj, name, lineno))
        except BadInputError as err:
            if not skip_bad:
                raise
            if bad is not None:
                bad.append(err.as_dict())
    return records
