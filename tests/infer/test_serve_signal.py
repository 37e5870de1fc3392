"""`lorakit serve` ends cleanly on SIGTERM: it drains, closes the engine, and exits with status 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# slow: tests/infer/test_cli_generate.py::test_serve_command_starts_on_loopback ends its server with SIGTERM and
# checks the same exit status 0 (with an adapter loaded), in the everyday suite
@pytest.mark.slow
def test_sigterm_exits_with_status_zero(tiny_dir):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", "--model", str(tiny_dir), "--port", str(port),
                             "--shutdown-timeout", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, proc.stdout.read().decode()[-2000:]
