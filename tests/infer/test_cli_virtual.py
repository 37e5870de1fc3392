"""`lorakit generate` and `lorakit serve` with prefix- and prompt-tuning folders: PEFT's greedy answers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from lorakit.cli import main
from tests.infer.test_engine_virtual import peft_greedy, save_peft_adapter

STEPS = 8


@pytest.fixture(scope="module")
def virtual_root(tiny_dir, tmp_path_factory):
    """A PEFT prefix (pre) and prompt (pro) folder for the tiny llama, under one root."""
    root = tmp_path_factory.mktemp("virtual-cli")
    save_peft_adapter(tiny_dir, root / "pre", "prefix", 1)
    save_peft_adapter(tiny_dir, root / "pro", "prompt", 2)
    return root


def _expected(tiny_dir, folder, prompt: str) -> str:
    """PEFT's greedy text for `prompt` as `lorakit generate` encodes it (the chat template)."""
    from lorakit.infer.engine import eos_token_ids
    from lorakit.infer.generate import encode
    from lorakit.models import load_model

    model, tok = load_model(tiny_dir)
    ids = peft_greedy(tiny_dir, folder, encode(tok, prompt, None, None, raw=False), STEPS, eos_token_ids(model, tok))
    return tok.decode(ids, skip_special_tokens=True)


def _generate(argv: list[str], capsys) -> str:
    # fp32: PEFT's answers are fp32 ones (auto would take bf16 on a CPU with native bf16)
    code = main(["generate", "--temperature", "0", "--max-new-tokens", str(STEPS), "--precision", "fp32", *argv])
    out = capsys.readouterr().out
    assert code == 0
    return out


def test_generate_with_a_prefix_or_prompt_folder_gives_peft_s_answer(tiny_dir, virtual_root, capsys):
    for name in ("pre", "pro"):
        out = _generate(["--model", str(tiny_dir), "--prompt", "Hello", "--adapter", str(virtual_root / name)], capsys)
        assert out.strip() == _expected(tiny_dir, virtual_root / name, "Hello").strip()


def test_generate_compares_virtual_lora_and_base_answers_in_one_batch(tiny_dir, virtual_root, adapter_root, capsys):
    folders = {"p": virtual_root / "pre", "q": virtual_root / "pro", "l": adapter_root / "a0"}
    out = _generate(["--model", str(tiny_dir), "--prompt", "Hello", "--base",
                     *[a for n, f in folders.items() for a in ("--adapter", f"{n}={f}")]], capsys)
    sections = out.split("=== ")[1:]
    assert [s.split(" ===")[0] for s in sections] == ["base", "p", "q", "l"]
    answers = {s.split(" ===")[0]: s.split("===\n", 1)[1].rsplit("\n[", 1)[0].strip() for s in sections}
    for name, folder in folders.items():  # each the same as alone
        alone = _generate(["--model", str(tiny_dir), "--prompt", "Hello", "--adapter", str(folder)], capsys)
        assert answers[name] == alone.strip()
    assert len(set(answers.values())) == 4


def test_serve_loads_virtual_folders_at_start_and_over_http(tiny_dir, virtual_root):
    from lorakit.infer.engine import eos_token_ids
    from lorakit.models import load_model
    from tests.infer.conftest import free_port
    from tests.infer.http import get, post

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", "--model", str(tiny_dir), "--port", str(port),
                             "--adapter", f"pre={virtual_root / 'pre'}", "--adapter-root", str(virtual_root),
                             "--max-context", "128", "--shutdown-timeout", "2", "--precision", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                health = get(f"{url}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert health.json()["adapters"] == ["pre"]
        post(f"{url}/v1/adapters", json={"name": "pro", "path": "pro"}).raise_for_status()
        listed = get(f"{url}/v1/adapters").json()["data"]
        assert [(a["name"], a["peft_type"], a["num_virtual_tokens"]) for a in listed] == [
            ("pre", "PREFIX_TUNING", 4), ("pro", "PROMPT_TUNING", 4)]
        model, tok = load_model(tiny_dir)
        ids = tok("Once upon a time").input_ids
        for name in ("pre", "pro"):
            reply = post(f"{url}/v1/completions", json={"model": name, "prompt": ids, "max_tokens": STEPS,
                                                        "temperature": 0}).raise_for_status().json()
            want = peft_greedy(tiny_dir, virtual_root / name, ids, STEPS, eos_token_ids(model, tok))
            assert reply["choices"][0]["text"] == tok.decode(want, skip_special_tokens=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
