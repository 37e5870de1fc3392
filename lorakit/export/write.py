"""Writing a GGUF file atomically: into a temp file beside it, fsync, then one rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorakit.atomic import clear_stale


@contextmanager
def atomic_gguf(out: Path, arch: str) -> Iterator:
    """Yield a `gguf.GGUFWriter` for architecture `arch`; the file appears at `out` only once
    everything added inside the block is written and synced (an error leaves no file there)."""
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # its per-file "Writing ..." lines are noise here
    out.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-")
    os.close(fd)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
