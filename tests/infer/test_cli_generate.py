"""`lorakit generate` end to end on the tiny model: streaming, two named adapters compared, chat, refusals."""

from __future__ import annotations

import io
import sys

import pytest

from lorakit.cli import main


def run(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_compares_two_named_adapters(tiny_dir, adapter_root, capsys):
    args = ["generate", "--model", str(tiny_dir), "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "8",
            "--adapter", f"one={adapter_root / 'a0'}", "--adapter", f"two={adapter_root / 'a1'}", "--base"]
    code, out, _ = run(args, capsys)
    assert code == 0
    sections = out.split("=== ")[1:]
    assert [s.split(" ===")[0] for s in sections] == ["base", "one", "two"]
    answers = [s.split("===\n", 1)[1].rsplit("\n[", 1)[0] for s in sections]
    assert len(set(answers)) == 3 and all(answers)
    # the same prompt and adapter alone gives the same greedy text
    code, alone, _ = run(["generate", "--model", str(tiny_dir), "--prompt", "Hello", "--temperature", "0",
                          "--max-new-tokens", "8", "--adapter", str(adapter_root / "a0")], capsys)
    assert code == 0 and alone.strip() == answers[1].strip()


def test_generate_chat_reads_turns_from_stdin(tiny_dir, capsys, monkeypatch):
    code, out, _ = run(["generate", "--model", str(tiny_dir), "--chat", "--temperature", "0", "--max-new-tokens", "5"],
                       capsys, stdin="first turn\nsecond turn\n/quit\n", monkeypatch=monkeypatch)
    assert code == 0 and out.count("model> ") == 2


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "word " * 300, "--max-context", "64"], "context holds 64"),
    (["--prompt", "x", "--adapter", "A=/nonexistent/dir"], "adapter directory not found"),
    (["--prompt", "x", "--temperature", "9"], "temperature must be between 0 and 2"),
    (["--prompt", "x", "--quantize", "nf4", "--precision", "bf16"], "a quantized base computes in fp32"),
])
def test_generate_refusals_are_one_line(tiny_dir, capsys, argv, message):
    code, _, err = run(["generate", "--model", str(tiny_dir), *argv], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_serve_refuses_a_missing_adapter_root(tiny_dir, capsys):
    code, _, err = run(["serve", "--model", str(tiny_dir), "--adapter-root", "/nonexistent/root"], capsys)
    assert code == 2 and "--adapter-root /nonexistent/root: not a directory" in err


def test_serve_command_starts_on_loopback(tiny_dir, adapter_root):
    import json
    import subprocess
    import time

    from tests.infer.conftest import free_port
    from tests.infer.http import get

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", "--model", str(tiny_dir), "--port", str(port),
                             "--adapter", f"first={adapter_root / 'a0'}", "--max-context", "128",
                             "--shutdown-timeout", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                health = get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert health.json()["adapters"] == ["first"]
        models = json.loads(get(f"http://127.0.0.1:{port}/v1/models").text)
        assert [m["id"] for m in models["data"]] == [tiny_dir.name, "first"]
        proc.terminate()  # SIGTERM: serve drains, closes the engine and exits with status 0
        code = proc.wait(timeout=30)
        assert code == 0, proc.stdout.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
