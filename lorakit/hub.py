"""Hugging Face Hub ids (`org/name`, `org/name@revision`) as `--model`: fetch what lorakit loads.

Only root-level files are fetched: config, tokenizer, chat template and the safetensors weights
(the shards an index names, else `model.safetensors`, else every root `*.safetensors`), into the
Hugging Face cache, so `hf download` and transformers share it. huggingface_hub reads HF_ENDPOINT,
HF_HUB_CACHE and HF_HUB_OFFLINE once, at import; here they are read at every call and passed
explicitly, so a change of the environment after import (a test's monkeypatch) counts.
"""

from __future__ import annotations

import glob
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lorakit.errors import LorakitError, ModelNotFoundError, one_line

DEFAULT_ENDPOINT = "https://huggingface.co"
INDEX = "model.safetensors.index.json"
# what lorakit loads besides the weights, where the repo has it
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
               "chat_template.jinja", "chat_template.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
API_TIMEOUT_S = 10  # one listing call: past this the hub counts as unreachable and the cache is used
# huggingface_hub's repo id rules: word characters, '-' and '.', not at either end of a part
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"({_PART}/{_PART})(?:@(\S+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it from the environment (read now)."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return Path(os.environ.get("HF_HOME", xdg / "huggingface")).expanduser() / "hub"


def parse_hub_id(spec: str | os.PathLike) -> tuple[str, str | None] | None:
    """``org/name`` or ``org/name@revision`` -> ``(repo_id, revision or None)``; None for anything else.

    The caller checks local paths first: a spec that exists on disk is never a Hub id.
    """
    match = _HUB_ID.fullmatch(str(spec))
    if match is None:
        return None
    repo_id, revision = match.group(1), match.group(2)
    # '--' and '..' are refused by the hub too; a name ending in .gguf is a mistyped path
    if "--" in repo_id or ".." in repo_id or len(repo_id) > 96 or repo_id.lower().endswith(".gguf"):
        return None
    return repo_id, revision


def base_model_fields(spec: str | os.PathLike) -> dict[str, str | None]:
    """The adapter_config.json fields naming the base: a Hub id's repo and revision, else the spec itself."""
    hub = None if Path(spec).expanduser().exists() else parse_hub_id(spec)
    if hub is None:
        return {"base_model_name_or_path": str(spec), "revision": None}
    return {"base_model_name_or_path": hub[0], "revision": hub[1]}


@dataclass(frozen=True)
class _Where:
    """One model on one hub, with the environment read at call time."""

    repo_id: str
    revision: str | None
    endpoint: str
    cache: Path
    offline: bool

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    @property
    def rev(self) -> str:
        return self.revision or "main"

    @property
    def storage(self) -> Path:
        # the cache layout huggingface_hub documents: models--org--name/{refs,snapshots}/...
        return self.cache / f"models--{self.repo_id.replace('/', '--')}"

    def snapshot(self, commit: str) -> Path:
        return self.storage / "snapshots" / commit

    def cached_snapshot(self) -> Path | None:
        """The cached snapshot folder of the revision, found without the network; None if never fetched."""
        ref = self.storage / "refs" / self.rev
        commit = ref.read_text().strip() if ref.is_file() else self.rev if _COMMIT.fullmatch(self.rev) else None
        folder = self.snapshot(commit) if commit else None
        return folder if folder is not None and folder.is_dir() else None

    def download_hint(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"`hf download {self.repo_id}{rev}`"

    def on_endpoint(self) -> str:
        return f" at HF_ENDPOINT={self.endpoint}" if os.environ.get("HF_ENDPOINT") else ""


def _env_on(name: str) -> bool:
    """A boolean environment variable as huggingface_hub reads one (1/ON/YES/TRUE, any case)."""
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _where(repo_id: str, revision: str | None) -> _Where:
    offline = _env_on("HF_HUB_OFFLINE") or _env_on("TRANSFORMERS_OFFLINE")
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return _Where(repo_id, revision, endpoint, hub_cache(), offline)


def hub_snapshot(repo_id: str, revision: str | None = None, *, config_only: bool = False) -> Path:
    """The local snapshot folder of a Hub model holding what lorakit loads, fetched if missing.

    `config_only` fetches config.json alone (the planner). A complete cached snapshot is used
    without the network when the hub is unreachable or HF_HUB_OFFLINE=1; an incomplete one never.
    """
    where = _where(repo_id, revision)
    listing = None if where.offline else _remote_listing(where)
    if not isinstance(listing, tuple):
        return _from_cache(where, config_only, listing)
    commit, files = listing
    if "config.json" not in files:
        raise ModelNotFoundError(f"model '{where.label}' on the hub has no config.json at its root: lorakit loads "
                                 "transformers models (for a GGUF repo, download the .gguf file with "
                                 f"`hf download {repo_id} FILE.gguf` and pass its path)")
    folder = where.snapshot(commit)
    if config_only:
        wanted = ["config.json"]
    else:
        if INDEX in files and not (folder / INDEX).is_file():
            folder = _download(where, [f for f in SMALL_FILES if f in files] + [INDEX])
        wanted = _wanted(where, files, folder, listed=True)
    if not all((folder / name).is_file() for name in wanted):
        folder = _download(where, wanted)
    _check_complete(where, folder, wanted, f"is incomplete after downloading; rerun (or run {where.download_hint()})")
    return folder


def _from_cache(where: _Where, config_only: bool, refused: LorakitError | None) -> Path:
    """The cached snapshot, complete, when the hub is not asked (offline), unreachable, or refused
    with `refused` (raised unless the cache has everything)."""
    folder = where.cached_snapshot()
    if folder is None or not any(folder.iterdir()):
        raise refused or ModelNotFoundError(_not_cached(where))
    if config_only:
        wanted = ["config.json"]
    else:
        files, listed = _cached_files(where, folder)
        wanted = _wanted(where, files, folder, listed)
    if refused is not None and not all((folder / name).is_file() for name in wanted):
        raise refused
    why = "HF_HUB_OFFLINE=1 is set" if where.offline else "the hub cannot be reached"
    _check_complete(where, folder, wanted, f"is incomplete and {why}; rerun online to finish the download "
                    f"(or run {where.download_hint()})")
    return folder


def _remote_listing(where: _Where) -> tuple[str, list[str]] | LorakitError | None:
    """(commit, root-level file names) from one model_info call; None when the hub cannot be reached;
    the one-line error of an HTTP refusal, raised unless the revision is cached complete (as in
    huggingface_hub, a cached copy outlives a repo that became gated or went away)."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError

    try:
        info = HfApi(endpoint=where.endpoint).model_info(where.repo_id, revision=where.revision,
                                                         timeout=API_TIMEOUT_S)
    except (httpx2.TransportError, OfflineModeIsEnabled):
        return None
    except RevisionNotFoundError as exc:
        raise _hub_error(where, exc) from None
    except HfHubHTTPError as exc:
        return _hub_error(where, exc)
    files = [s.rfilename for s in info.siblings or [] if "/" not in s.rfilename]
    return str(info.sha), files


def _cached_files(where: _Where, folder: Path) -> tuple[list[str], bool]:
    """Root-level files of the cached revision and whether that is the repo's full listing: its
    cached tree listing (a file that never arrived counts as missing), else what the folder holds."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        tree = get_cached_repo_tree(where.repo_id, revision=folder.name, cache_dir=str(where.cache))
        return [f.path for f in tree if "/" not in f.path], True
    except CachedRepoTreeNotFoundError:
        return sorted(p.name for p in folder.iterdir()), False


def _wanted(where: _Where, files: list[str], folder: Path, listed: bool) -> list[str]:
    """The files lorakit loads among the repo's root `files`, the shards read from `folder`'s index.
    `listed`: `files` is the repo's full listing, so no weights there means none in the repo."""
    small = [f for f in SMALL_FILES if f in files]
    if INDEX in files:
        try:
            shards = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return small + [INDEX]  # unreadable or missing: _check_complete names it
        return small + [INDEX] + [s for s in shards if "/" not in s]
    weights = ["model.safetensors"] if "model.safetensors" in files else \
        sorted(f for f in files if f.endswith(".safetensors"))
    if weights:
        return small + weights
    if not listed:
        return small + ["model.safetensors"]  # a cached folder without weights: reported as incomplete
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ModelNotFoundError(
            f"model '{where.label}' on the hub has only pickle weights ({pickles[0]}): lorakit loads safetensors "
            "only; convert it with the hub's Space https://huggingface.co/spaces/safetensors/convert and pass "
            f"the revision it opens ({where.repo_id}@refs/pr/N), or save a local copy with safetensors "
            "(transformers save_pretrained) and pass its folder")
    raise ModelNotFoundError(f"model '{where.label}' on the hub has no *.safetensors weights at its root; pass "
                             "a local model folder or a .gguf file instead")


def _check_complete(where: _Where, folder: Path, wanted: list[str], then: str) -> None:
    """Refuse a snapshot that lacks a file lorakit loads (a download that never finished)."""
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelNotFoundError(f"the cached copy of '{where.label}' in {folder} lacks {missing[0]}{more}: it {then}")


@contextmanager
def _progress_on() -> Iterator[None]:
    """huggingface_hub's download bars on for the download (transformers' quiet mode turns them off),
    unless HF_HUB_DISABLE_PROGRESS_BARS says otherwise; the previous state after."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    off = _env_on("HF_HUB_DISABLE_PROGRESS_BARS")
    switch = not off and are_progress_bars_disabled()  # global: the "Fetching N files" bar has no group
    if switch:
        enable_progress_bars()
    try:
        yield
    finally:
        if switch:
            disable_progress_bars()


def _download(where: _Where, names: list[str]) -> Path:
    """snapshot_download of exactly `names` (root files; patterns escaped); the snapshot folder."""
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        with _progress_on():
            return Path(snapshot_download(where.repo_id, revision=where.rev, cache_dir=str(where.cache),
                                          endpoint=where.endpoint, allow_patterns=[glob.escape(n) for n in names]))
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise _hub_error(where, exc) from None
    except (httpx2.HTTPError, OSError) as exc:  # cut off, consistency check, disk full
        raise _download_failed(where, one_line(exc, 200)) from None


def _not_cached(where: _Where) -> str:
    why, fix = (("HF_HUB_OFFLINE=1 is set", "unset HF_HUB_OFFLINE and rerun") if where.offline
                else (f"the hub ({where.endpoint}) cannot be reached", "connect and rerun"))
    return (f"model '{where.label}' is not in the Hugging Face cache ({where.cache}) and {why}: {fix}, "
            f"download it with {where.download_hint()}, or pass a local model folder")


def _hub_error(where: _Where, exc: Exception) -> LorakitError:
    """One line for a huggingface_hub error: gated/private, not found, revision, or the download failing."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    status = getattr(getattr(exc, "response", None), "status_code", None)
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    if isinstance(exc, GatedRepoError) or (status in (401, 403) and not isinstance(exc, RepositoryNotFoundError)):
        return ModelNotFoundError(f"model '{where.label}' is gated or private on the hub{where.on_endpoint()} "
                                  f"(HTTP {status}): accept its terms on its page if gated, then {login} and rerun")
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(f"model '{where.repo_id}' has no revision '{where.rev}' on the hub"
                                  f"{where.on_endpoint()}: check the branch, tag or commit after '@'")
    if isinstance(exc, RepositoryNotFoundError):
        private = f"; if it is private, {login}" if status == 401 else ""
        return ModelNotFoundError(f"model '{where.label}' not found: no such local path, and no model "
                                  f"'{where.repo_id}' on the hub{where.on_endpoint()}: check the spelling (org/name)"
                                  f"{private}")
    if isinstance(exc, LocalEntryNotFoundError):  # the hub went away during the download
        folder = where.cached_snapshot()
        if folder is None:
            return ModelNotFoundError(_not_cached(where))
        return ModelNotFoundError(f"the cached copy of '{where.label}' in {folder} is incomplete and the hub "
                                  f"cannot be reached: rerun online to finish the download")
    detail = f"HTTP {status}" if isinstance(exc, HfHubHTTPError) and status else one_line(exc, 200)
    return _download_failed(where, detail)


def _download_failed(where: _Where, detail: str) -> LorakitError:
    return LorakitError(f"downloading '{where.label}' from {where.endpoint} failed ({detail}); nothing incomplete "
                        "is loaded: rerun to retry")
