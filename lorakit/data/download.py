"""Download Project Gutenberg plain-text ebooks by id, with a local cache and retries.

The mirror is configurable (``--mirror`` or ``$LORAKIT_GUTENBERG_MIRROR``) so tests and
offline setups can point it at a local server. Files are cached as served under
``lorakit_home() / "gutenberg"``; a cached book never touches the network again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from lorakit.atomic import atomic_write
from lorakit.errors import LorakitError

DEFAULT_MIRROR = "https://www.gutenberg.org"
MIRROR_ENV = "LORAKIT_GUTENBERG_MIRROR"
RETRY_STATUS = {429, 500, 502, 503, 504}
USER_AGENT = "lorakit-data/0.1"
log = logging.getLogger("lorakit.data")


def mirror_url(mirror: str | None = None) -> str:
    """The mirror base URL: the argument, else $LORAKIT_GUTENBERG_MIRROR, else gutenberg.org."""
    return (mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).rstrip("/")


def cache_dir() -> Path:
    """Where downloaded ebooks are kept."""
    from lorakit.models import lorakit_home  # imports torch: only when a download actually runs

    return lorakit_home() / "gutenberg"


def candidate_paths(ebook_id: int) -> list[str]:
    """Paths of the plain-text file on the main site and on mirrors laid out as 1/2/3/123/."""
    digits = str(ebook_id)
    tree = "/".join(digits[:-1]) if len(digits) > 1 else "0"
    return [
        f"cache/epub/{ebook_id}/pg{ebook_id}.txt",
        f"files/{ebook_id}/{ebook_id}-0.txt",
        f"files/{ebook_id}/{ebook_id}.txt",
        f"{tree}/{ebook_id}/{ebook_id}-0.txt",
        f"{tree}/{ebook_id}/{ebook_id}.txt",
        f"{tree}/{ebook_id}/{ebook_id}-8.txt",
    ]


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, data)


def _get(url: str, *, retries: int, backoff: float, timeout: float) -> bytes | None:
    """Body of `url`; None on 404/410; retries 5xx, 429 and network errors; raises when they persist."""
    last: str = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                return None
            if exc.code not in RETRY_STATUS:
                raise LorakitError(f"{url}: the mirror answered HTTP {exc.code} {exc.reason}; "
                                   f"try another mirror with --mirror or ${MIRROR_ENV}") from None
            last = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
            last = str(getattr(exc, "reason", exc))
        log.info("%s: %s (attempt %d of %d)", url, last, attempt + 1, retries + 1)
    raise _Unreachable(last)


class _Unreachable(Exception):
    pass


def fetch_ebook(ebook_id: int, *, mirror: str | None = None, retries: int = 3, backoff: float = 1.0,
                timeout: float = 30.0, use_cache: bool = True) -> tuple[Path, dict]:
    """Path of the cached plain text of `ebook_id` (downloaded if needed) and what happened."""
    if ebook_id <= 0:
        raise LorakitError(f"--id {ebook_id}: Project Gutenberg ebook ids are positive numbers (e.g. 2600)")
    cached = cache_dir() / f"pg{ebook_id}.txt"
    if use_cache and cached.is_file() and cached.stat().st_size > 0:
        return cached, {"id": ebook_id, "cached": True, "url": None, "bytes": cached.stat().st_size}
    base = mirror_url(mirror)
    for path in candidate_paths(ebook_id):
        url = f"{base}/{path}"
        try:
            data = _get(url, retries=retries, backoff=backoff, timeout=timeout)
        except _Unreachable as exc:
            raise LorakitError(
                f"cannot download ebook {ebook_id}: the mirror {base} is unreachable ({exc}); check your "
                f"network (offline?) or pass --mirror / set ${MIRROR_ENV}; cached books are in {cache_dir()}"
            ) from None
        if data is None:
            continue
        head = data[:512].lstrip().lower()
        if not data.strip() or head.startswith((b"<!doctype", b"<html")):
            raise LorakitError(f"{url}: the mirror returned {'an empty file' if not data.strip() else 'an HTML page'}, "
                               "not a plain-text ebook; try another mirror with --mirror")
        _atomic_write(cached, data)
        return cached, {"id": ebook_id, "cached": False, "url": url, "bytes": len(data)}
    raise LorakitError(f"ebook {ebook_id} has no plain-text file on {base} (tried {len(candidate_paths(ebook_id))} "
                       "locations); check the id on gutenberg.org")


def download_ebooks(ids: Iterable[int], out_dir: str | os.PathLike, **kwargs) -> list[dict]:
    """Fetch every id (see `fetch_ebook` for options) and copy it to `out_dir/pg<id>.txt`."""
    out = Path(out_dir).expanduser()
    results = []
    for ebook_id in ids:
        cached, info = fetch_ebook(int(ebook_id), **kwargs)
        target = out / f"pg{ebook_id}.txt"
        _atomic_write(target, cached.read_bytes())
        info["file"] = str(target)
        log.info("ebook %d: %s (%s bytes)", ebook_id, "from cache" if info["cached"] else info["url"], info["bytes"])
        results.append(info)
    return results
