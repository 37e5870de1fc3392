"""lorakit's cache root, and facts measured once per machine and kept there.

A probe (does this CPU run bf16 GEMMs natively?) is cheap but not free, and `--precision auto`
is the default of every command: its answer is kept in ``$LORAKIT_HOME/machine.json`` under a key
naming the CPU model, its kernel flags and the PyTorch version, so a different machine (the same
home folder on another CPU kind) or a PyTorch upgrade measures again instead of reusing an answer
that no longer holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from lorakit.atomic import atomic_write


def lorakit_home() -> Path:
    """Cache root: ``$LORAKIT_HOME`` or ``~/.cache/lorakit``."""
    return Path(os.environ.get("LORAKIT_HOME", Path.home() / ".cache" / "lorakit")).expanduser()


def machine_key() -> str:
    """Names this machine kind: CPU model, kernel flags, PyTorch version (a short hash of them)."""
    import torch

    from lorakit.runtime.machine import cpu_facts

    facts = cpu_facts()
    text = f"{facts['cpu']}|{' '.join(facts['flags'])}|{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, torn or hand-edited: measure again
        return {}
    return data if isinstance(data, dict) else {}


def measured_once(name: str, probe: Callable[[], bool]) -> bool:
    """`probe()`'s answer on this machine kind, measured on the first call ever and cached in
    ``$LORAKIT_HOME/machine.json``. An unwritable cache only means measuring again next time."""
    path = lorakit_home() / "machine.json"
    key = machine_key()
    entry = _read(path).get(key, {})
    if isinstance(entry, dict) and isinstance(entry.get(name), bool):
        return entry[name]
    value = bool(probe())
    data = _read(path)  # re-read: another process may have added its own answers meanwhile
    entry = data.get(key) if isinstance(data.get(key), dict) else {}
    data[key] = {**entry, name: value}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
    return value
