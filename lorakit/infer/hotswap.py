"""Load, unload and combine adapters while the engine serves requests.

Files are read and checked, and the new adapter's modules built, on the caller's thread
(`prepare_adapter` only reads the model); only inserting them (`attach_adapter`, a few
milliseconds) runs on the engine's worker thread, between two decode steps, so running
streams do not wait for a load. The load returns once that insert is queued: the engine takes
its queue in order, so any request sent afterwards runs with the adapter in place, and a load
does not wait out the decode step in flight (bench/RESULTS_serve.md has the timings).
An unloaded adapter stops taking new requests at once and is deleted when its last running
request ends.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import Future
from pathlib import Path

from lorakit.adapters.io import attach_adapter, prepare_adapter
from lorakit.errors import AdapterLoadError, LorakitError
from lorakit.infer.combine import install_adapter, plan_combination
from lorakit.infer.engine import Engine
from lorakit.infer.request import EngineError, UnknownAdapterError
from lorakit.infer.virtual_rows import attach_virtual, is_virtual_folder, prepare_virtual, virtual_rows

# no '.': torch refuses it in module names, and an adapter's name becomes one (lora_A[name])
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: a longer path cannot name a directory


class AdapterForbiddenError(EngineError):
    status = 403


class AdapterConflictError(EngineError):
    status = 409


class AdapterIncompatibleError(EngineError):
    status = 422


class AdapterPathNotFoundError(EngineError):
    status = 404


def check_name(engine: Engine, name: str, reserved: set[str]) -> None:
    """Refuse names that are malformed, reserved (the base's) or taken."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise EngineError(f"adapter name {name!r} is invalid: use 1-64 letters, digits, '_' or '-'")
    if name in reserved:
        raise AdapterConflictError(f"{name!r} is the base model's name; pick another adapter name")
    if name in engine.draining:  # its last request may have just ended, before the worker deleted it
        engine.call(engine.finish_draining)
    if name in engine.draining:
        raise AdapterConflictError(f"adapter {name!r} is being unloaded and its last requests are still running; "
                                   "retry in a moment, or pick another name")
    if name in engine.public_adapters or name in engine.pending:
        raise AdapterConflictError(f"an adapter named {name!r} is already loaded; unload it first or pick another name")


def resolve_under(root: str | os.PathLike | None, path: str) -> Path:
    """`path` (relative to `root`, or absolute) resolved; it must lie inside `root` when one is set."""
    if "\x00" in path or len(path) > MAX_PATH_CHARS:
        raise EngineError(f"adapter path {path[:80]!r} is not a usable path (a NUL character, or too long)")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise EngineError(f"adapter path {path[:80]!r} cannot be a file name here: send valid text") from None
    if root is None:
        return Path(path).expanduser().resolve()
    base = Path(root).expanduser().resolve()
    try:
        target = (base / path).resolve()  # resolve() follows symlinks, so a link out of the root is caught too
    except (OSError, RuntimeError) as exc:  # a symlink loop, a component too long
        raise AdapterPathNotFoundError(f"adapter path {path[:80]!r} cannot be resolved under the adapter root: "
                                       f"{exc}") from None
    if target != base and base not in target.parents:
        raise AdapterForbiddenError(f"adapter path {path!r} is outside the adapter root {base}; "
                                    "copy the adapter under it or restart with another --adapter-root")
    return target


def load(engine: Engine, name: str, path: str | os.PathLike, *, root: str | os.PathLike | None = None,
         reserved: set[str] = frozenset()) -> Future:
    """Load the PEFT adapter at `path` as `name`: requests may use it once this returns.

    Every check that can refuse the adapter runs here, before it returns. The result is the
    Future of the insert on the engine thread; its value is the seconds the model was paused.
    """
    check_name(engine, name, set(reserved))
    target = resolve_under(root, str(path))
    try:
        is_dir = target.is_dir()
    except OSError:  # e.g. a name component longer than the file system allows
        is_dir = False
    if not is_dir:
        raise AdapterPathNotFoundError(f"adapter directory {str(path)!r} not found under the adapter root")
    virtual = is_virtual_folder(target)  # prefix/prompt tuning: tensors the engine puts in rows' slots
    try:  # read, check and build the tensors here: the engine keeps decoding meanwhile
        prepare = prepare_virtual if virtual else prepare_adapter
        prepared = prepare(engine.model, target, name)
    except AdapterLoadError as exc:
        raise AdapterIncompatibleError(str(exc)) from None

    def apply() -> float:
        start = time.perf_counter()
        if virtual:
            attach_virtual(engine.model, prepared)
        else:
            attach_adapter(engine.model, prepared)  # inserts the ready modules: the model changes only here
        return time.perf_counter() - start

    try:
        return engine.post(apply, adds=name)
    except ValueError as exc:  # the name was taken while this thread prepared the adapter
        raise AdapterConflictError(str(exc)) from None


def unload(engine: Engine, name: str) -> None:
    """Stop new requests for `name` now; delete it once its running requests have finished."""
    if name not in engine.adapter_names():
        raise UnknownAdapterError(f"no adapter named {name!r}; loaded: {', '.join(engine.adapter_names()) or 'none'}")

    def mark() -> None:
        engine.draining.add(name)

    engine.call(mark)


def combine(engine: Engine, name: str, weights: dict[str, float], *, method: str = "linear",
            density: float = 0.5, rank: int | None = None, reserved: set[str] = frozenset()) -> None:
    """Create adapter `name` = weighted combination of loaded adapters (see `lorakit.infer.combine`)."""
    check_name(engine, name, set(reserved))
    missing = [n for n in weights if n not in engine.adapter_names()]
    if missing:
        raise UnknownAdapterError(f"no adapter named {missing[0]!r} to combine; "
                                  f"loaded: {', '.join(engine.adapter_names()) or 'none'}")
    virtual = [n for n in weights if n in virtual_rows(engine.model)]
    if virtual:
        raise EngineError(f"adapter {virtual[0]!r} is a prefix/prompt tuning adapter: it has no weights to add up; "
                          "combine LoRA adapters only")
    if any(n in engine.pending for n in weights):
        engine.call(lambda: None)  # the combination reads their factors: let queued attaches land first
    try:
        plan = plan_combination(engine.model, weights, method, density, rank)
        engine.call(lambda: install_adapter(engine.model, name, plan))
    except EngineError:
        raise
    except LorakitError as exc:
        raise EngineError(str(exc)) from None
