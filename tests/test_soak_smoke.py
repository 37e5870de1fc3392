"""Keeps bench/soak_train.py and bench/soak_serve.py from rotting: their helpers, and a very short run of each."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str):
    """Import bench/<name>.py (bench is a folder of scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_adapters_compare_bitwise(tmp_path):
    soak_train = _bench("soak_train")
    a = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    nudged = {**a, "w": a["w"].clone()}
    nudged["w"][1, 2] = torch.nextafter(nudged["w"][1, 2], torch.tensor(float("inf")))  # one ulp
    for name, tensors in (("a", a), ("same", {k: v.clone() for k, v in a.items()}), ("nudged", nudged),
                          ("fewer", {"w": a["w"]})):
        save_file(tensors, tmp_path / f"{name}.safetensors")
    assert soak_train.compare_adapters(tmp_path / "a.safetensors", tmp_path / "same.safetensors") == []
    assert soak_train.compare_adapters(tmp_path / "a.safetensors", tmp_path / "nudged.safetensors") == ["w"]
    assert soak_train.compare_adapters(tmp_path / "a.safetensors", tmp_path / "fewer.safetensors") == ["b"]


def test_leftovers_of_atomic_writes_are_found_and_nothing_else(tmp_path):
    soak_train = _bench("soak_train")
    ckpt = tmp_path / "checkpoints"
    for d in ("step-000002", ".step-000004.tmp-abc", ".step-000002.old-123"):
        (ckpt / d).mkdir(parents=True)
    for f in ("latest.json", ".latest.json.xyz.tmp", "metrics.jsonl"):
        (ckpt / f).write_text("{}")
    assert soak_train.temp_entries(tmp_path) == {"checkpoints/.step-000004.tmp-abc",
                                                 "checkpoints/.step-000002.old-123",
                                                 "checkpoints/.latest.json.xyz.tmp"}


def test_torn_metrics_line_is_skipped(tmp_path):
    soak_train = _bench("soak_train")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 1, "eval_loss": 2.0}\n{"step": 2, "lo')
    assert soak_train.steps_logged(tmp_path) == [1]


def test_the_raw_http_client_reads_chunked_and_sized_answers():
    soak_serve = _bench("soak_serve")

    async def serve_once(reader, writer, answer: bytes) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def roundtrip(answer: bytes):
        server = await asyncio.start_server(lambda r, w: serve_once(r, w, answer), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await soak_serve.call(port, "GET", "/health")

    sized = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
    assert asyncio.run(roundtrip(sized)) == (200, b"hello")
    assert asyncio.run(roundtrip(chunked)) == (503, b"hello")


@pytest.mark.slow  # three `lorakit train` processes
def test_a_short_kill_soak_passes(tmp_path):
    soak_train = _bench("soak_train")
    assert soak_train.main(["--kills", "2", "--max-steps", "16", "--work", str(tmp_path)]) == 0


@pytest.mark.slow  # a `lorakit serve` process, its solo answers, a few seconds of soak and a SIGTERM
def test_a_short_serve_soak_passes(tmp_path):
    soak_serve = _bench("soak_serve")
    assert soak_serve.main(["--duration", "4", "--clients", "4", "--slow-clients", "1", "--slow-seconds", "1",
                            "--oversize-every", "1", "--oversize-mb", "5", "--probe-tokens", "20",
                            "--drain-requests", "2", "--work", str(tmp_path)]) == 0
