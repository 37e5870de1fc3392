"""A stand-in for the Hugging Face Hub on 127.0.0.1, enough for huggingface_hub to list and download.

It serves model repos from folders the way the Hub's HTTP API does: model info with siblings and
the commit sha per revision (`/api/models/{id}[/revision/{rev}]`), the tree listing
(`/api/models/{id}/tree/{rev}`), and files on `/{id}/resolve/{rev}/{path}` (HEAD and GET, Range
requests answered 206) with `X-Repo-Commit`, `ETag` (sha256 for LFS-like files, the git blob sha1
otherwise) and `X-Linked-Etag` / `X-Linked-Size` for LFS-like files. No Xet headers are sent, so
huggingface_hub downloads over plain HTTP. Errors carry the Hub's `X-Error-Code`: RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo. Every request is logged.

The `hub` fixture starts one, points HF_ENDPOINT at it and HF_HUB_CACHE at an empty folder.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it: method, repo, what was asked (a file or 'info'/'tree'), Range."""

    method: str
    repo_id: str
    kind: str  # "info", "tree" or "resolve"
    revision: str | None
    path: str | None
    range: str | None


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}


def _blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class FakeHub:
    """The server. `add(repo_id, folder, branch)` publishes a folder as a commit on a branch."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.gated: dict[str, int] = {}  # repo_id -> status (401 or 403) answered on resolve
        # (repo_id, path) -> what follows the cut-off first GET: "resume" (served again) or "fail" (500)
        self.interrupts: dict[tuple[str, str], str] = {}
        self.failing: set[tuple[str, str]] = set()
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- publishing and switches -------------------------------------------------------------
    def add(self, repo_id: str, folder: Path, branch: str = "main") -> str:
        """Publish every file under `folder` as a new commit on `branch`; returns its sha."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        digest = hashlib.sha1()
        for path, data in files.items():
            digest.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
        sha = digest.hexdigest()
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha

    def interrupt(self, repo_id: str, path: str, then: str = "resume") -> None:
        """Cut the next GET of `path` off mid-body; later GETs are served ("resume") or get 500 ("fail")."""
        assert then in ("resume", "fail")
        self.interrupts[(repo_id, path)] = then

    def heal(self) -> None:
        self.interrupts.clear()
        self.failing.clear()

    # --- what was asked ----------------------------------------------------------------------
    def fetched(self, repo_id: str) -> set[str]:
        """Paths of `repo_id` whose content was requested (GET on resolve)."""
        return {r.path for r in self.requests() if r.repo_id == repo_id and r.kind == "resolve" and r.method == "GET"}

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self.log)

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    # --- lifetime ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: a later request is refused (connection refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped server leaves no pooled socket

    def log_message(self, *args) -> None:  # the request log replaces stderr chatter
        pass

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def _route(self, method: str) -> None:
        # split before unquoting: a revision is quoted whole (refs%2Fpr%2F1)
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
        hub = self.server_hub
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            kind = "tree" if rest[:1] == ["tree"] else "info"
            revision = rest[1] if len(rest) >= 2 else None
            self._log(method, repo_id, kind, revision, None)
            commit = self._commit(repo_id, revision)
            if commit is not None:
                self._api(repo_id, kind, commit)
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            self._log(method, repo_id, "resolve", revision, path)
            if repo_id in hub.gated and repo_id in hub.repos:
                return self._error(hub.gated[repo_id], "GatedRepo", f"Access to model {repo_id} is restricted")
            commit = self._commit(repo_id, revision)
            if commit is not None:
                self._file(method, repo_id, commit, path)
        else:
            self._error(404, None, "Not Found")

    def _log(self, method, repo_id, kind, revision, path) -> None:
        with self.server_hub._lock:
            self.server_hub.log.append(Request(method, repo_id, kind, revision, path, self.headers.get("Range")))

    def _commit(self, repo_id: str, revision: str | None) -> str | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        revision = revision or "main"
        if revision in repo.commits:
            return revision
        if revision in repo.branches:
            return repo.branches[revision]
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return None

    def _api(self, repo_id: str, kind: str, commit: str) -> None:
        files = self.server_hub.repos[repo_id].commits[commit]
        if kind == "info":
            body = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "gated": "manual" if repo_id in self.server_hub.gated else False, "disabled": False,
                    "tags": [], "siblings": [{"rfilename": p} for p in files]}
        else:
            body = []
            for path, data in files.items():
                entry = {"type": "file", "oid": _blob_sha1(data), "size": len(data), "path": path}
                if _is_lfs(path):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                body.append(entry)
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _file(self, method: str, repo_id: str, commit: str, path: str) -> None:
        hub = self.server_hub
        data = hub.repos[repo_id].commits[commit].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", commit)
        key = (repo_id, path)
        if method == "GET" and key in hub.failing:
            return self._error(500, None, "Internal Error", commit)
        etag = hashlib.sha256(data).hexdigest() if _is_lfs(path) else _blob_sha1(data)
        start, end, status = 0, len(data) - 1, 200
        wanted = self.headers.get("Range")
        if wanted and method == "GET" and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start, end, status = int(first or 0), int(last) if last else len(data) - 1, 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{etag}"')
        if _is_lfs(path):
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if method == "HEAD":
            return
        body = data[start:end + 1]
        then = hub.interrupts.pop(key, None) if method == "GET" else None
        if then is None:
            self.wfile.write(body)
            return
        if then == "fail":
            hub.failing.add(key)
        self.wfile.write(body[: len(body) // 2])  # the first half, then the connection drops
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running FakeHub with HF_ENDPOINT pointing at it and an empty HF_HUB_CACHE under tmp_path."""
    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield server
    finally:
        server.stop()
