"""Atomic writes: a reader (or a crash) never sees half a file or half a directory.

Every output lorakit writes goes through one of these two: a file is written to a temp
file beside it and renamed over it; a directory is filled in a temp directory beside it and
swapped in, the previous one put back if the swap fails.

An exception (KeyboardInterrupt included) removes the temp file or directory. A kill -9 cannot
be caught, so temp names carry the writer's process id: ``.NAME.tmp-PID-XXXX`` (the new
content) and ``.NAME.old-PID-XXXX`` (the previous directory during the swap). The next write
of the same output removes those of dead processes, and puts a stranded previous directory
back first if the kill fell between the two renames, so nothing is lost and nothing piles up.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (one we may not signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clear_stale(out: str | os.PathLike) -> list[Path]:
    """Remove the temp files/directories that killed writers of `out` left beside it; returns them.

    A previous directory stranded mid-swap (``.NAME.old-PID-*`` with no `out`) is renamed back to
    `out` instead. Temp names of live processes and names in other formats are left alone.
    """
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-")
    try:
        entries = list(os.scandir(out.parent))
    except OSError:  # no parent yet: nothing stale
        return []
    found = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(2))):
            continue
        path = Path(entry.path)
        if match.group(1) == "old" and not os.path.lexists(out):
            os.replace(path, out)  # the kill fell between the two renames: the previous output is this
        else:
            _remove(path)
        found.append(path)
    return found


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success it replaces `out` (any old one removed).

    On an error inside the block or during the swap, the temp directory is removed and a
    previous `out` is left (or put back) as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(out)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{pid}-", dir=out.parent))
    old = out.parent / f".{out.name}.old-{pid}-{secrets.token_hex(4)}"
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if os.path.lexists(out):
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.lexists(old) and not os.path.lexists(out):
            os.replace(old, out)
        raise
    _remove(old)
