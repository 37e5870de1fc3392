"""Gutenberg downloader against a local HTTP server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lorakit.cli import main
from lorakit.data.download import MIRROR_ENV, cache_dir, download_ebooks, fetch_ebook
from lorakit.errors import LorakitError

BOOK = (b"*** START OF THE PROJECT GUTENBERG EBOOK 11 ***\n\nA tiny invented book.\n\n"
        b"*** END OF THE PROJECT GUTENBERG EBOOK 11 ***\n")


class Mirror:
    """A fake mirror: path -> list of statuses to answer in turn (the last one repeats)."""

    def __init__(self):
        self.routes: dict[str, tuple[list[int], bytes]] = {}
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                mirror.requests.append(self.path)
                statuses, body = mirror.routes.get(self.path, ([404], b""))
                status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if status == 200 else 0))
                self.end_headers()
                if status == 200:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    m = Mirror()
    yield m
    m.close()


def test_download_then_cache_hit(mirror, tmp_path):
    mirror.routes["/cache/epub/11/pg11.txt"] = ([200], BOOK)
    (first,) = download_ebooks([11], tmp_path / "out", mirror=mirror.url, backoff=0.01)
    assert not first["cached"] and (tmp_path / "out" / "pg11.txt").read_bytes() == BOOK
    assert (cache_dir() / "pg11.txt").read_bytes() == BOOK and str(cache_dir()).startswith(str(tmp_path / "home"))
    (second,) = download_ebooks([11], tmp_path / "out2", mirror=mirror.url)
    assert second["cached"] and mirror.requests == ["/cache/epub/11/pg11.txt"]  # no second request


def test_retries_on_503_then_succeeds(mirror):
    mirror.routes["/cache/epub/12/pg12.txt"] = ([503, 503, 200], BOOK)
    path, info = fetch_ebook(12, mirror=mirror.url, retries=3, backoff=0.01)
    assert path.read_bytes() == BOOK and mirror.requests.count("/cache/epub/12/pg12.txt") == 3


def test_persistent_503_gives_a_clear_error(mirror):
    mirror.routes["/cache/epub/13/pg13.txt"] = ([503], BOOK)
    with pytest.raises(LorakitError, match=r"ebook 13.*unreachable \(HTTP 503"):
        fetch_ebook(13, mirror=mirror.url, retries=2, backoff=0.01)
    assert len(mirror.requests) == 3


def test_falls_back_to_other_mirror_layouts(mirror):
    mirror.routes["/1/2/123/123-0.txt"] = ([200], BOOK)
    path, info = fetch_ebook(123, mirror=mirror.url, backoff=0.01)
    assert info["url"].endswith("/1/2/123/123-0.txt") and path.read_bytes() == BOOK


def test_unknown_id_and_html_answers_are_explained(mirror):
    with pytest.raises(LorakitError, match="ebook 99 has no plain-text file"):
        fetch_ebook(99, mirror=mirror.url, backoff=0.01)
    mirror.routes["/cache/epub/14/pg14.txt"] = ([200], b"<!DOCTYPE html><html>captcha</html>")
    with pytest.raises(LorakitError, match="an HTML page, not a plain-text ebook"):
        fetch_ebook(14, mirror=mirror.url, backoff=0.01)


def test_offline_fails_fast_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    with socket.socket() as s:  # a port on loopback with nobody listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{port}")  # the env var is honoured without --mirror
    code = main(["data", "gutenberg", "--id", "2600", "--out", str(tmp_path / "out"), "--retries", "1",
                 "--backoff", "0.01", "--timeout", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"127.0.0.1:{port} is unreachable" in err and "offline" in err and "--mirror" in err
    assert not (tmp_path / "out").exists()


def test_cli_downloads_into_out(mirror, tmp_path, capsys):
    mirror.routes["/cache/epub/15/pg15.txt"] = ([200], BOOK)
    assert main(["data", "gutenberg", "--id", "15", "--out", str(tmp_path / "o"), "--mirror", mirror.url]) == 0
    assert (tmp_path / "o" / "pg15.txt").is_file() and "downloaded" in capsys.readouterr().out
