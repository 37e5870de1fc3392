"""The server's limits: body size and nesting, prompt length off the event loop, clients that leave,
unexpected faults as JSON, the engine's and the CLI's numeric settings, the queue and the shutdown."""

from __future__ import annotations

import http.client
import json
import logging
import select
import socket
import threading
import time

import pytest

from tests.infer.conftest import LiveServer

SMALL_BODY = 64 * 1024  # the body limit of the `small` app, so the tests send little


@pytest.fixture(scope="module")
def model_tok(tiny_dir):
    """The tiny model, shared by this module's engines (only one of them decodes at a time)."""
    from lorakit.models import load_model

    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def setup(model_tok):
    """One engine (context 256, the tiny model's whole) behind a default app and a small-body app."""
    from lorakit.infer.engine import Engine
    from lorakit.infer.server import create_app

    model, tok = model_tok
    engine = Engine(model, tok, max_batch=4, max_context=256, max_queue=8)
    app = create_app(engine, "tiny")
    server = LiveServer(app)
    small = LiveServer(create_app(engine, "tiny", max_body=SMALL_BODY))
    yield {"engine": engine, "app": app, "server": server, "small": small}
    server.stop()
    small.stop()
    engine.close()


def _raw(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> tuple[int, dict]:
    """Send `head` + `body` on a fresh socket; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, json.loads(resp.read())


def _envelope(body: dict) -> str:
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    return body["error"]["message"]


def _wait(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_declared_oversized_body_is_refused_before_it_is_sent(setup):
    # only the headers and a sliver of the body are sent: the answer must come without the rest
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (SMALL_BODY + 1))
    status, body = _raw(setup["small"].port, head, b'{"model": "tiny", "prompt": "')
    assert status == 413 and "limit" in _envelope(body)


def test_a_chunked_body_is_read_only_up_to_the_limit(setup):
    chunk = b"x" * 4096
    with socket.create_connection(("127.0.0.1", setup["small"].port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(2 * SMALL_BODY // len(chunk)):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # the body has not ended (no last chunk): the answer must come from reading past the limit
        assert select.select([s], [], [], 5)[0], "the server kept waiting for the rest of an oversized body"
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert resp.status == 413 and "limit" in _envelope(json.loads(resp.read()))


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/adapters", "/v1/adapters/combine"])
def test_deeply_nested_json_is_a_400(setup, path):
    from fastapi.testclient import TestClient

    client = TestClient(setup["app"], raise_server_exceptions=False)
    for body in (b"[" * 100000, b'{"a":' * 40 + b"1" + b"}" * 40):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested" in _envelope(r.json())


def test_health_answers_while_a_huge_prompt_is_handled(setup):
    server = setup["server"]
    # under the body limit, so the prompt reaches the length check (the old server tokenized it on the loop)
    big = json.dumps({"model": "tiny", "prompt": "word " * 700_000, "max_tokens": 4}).encode()
    result: dict = {}

    def send() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("POST", "/v1/completions", body=big, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        result["status"], result["body"] = resp.status, json.loads(resp.read())

    worker = threading.Thread(target=send)
    worker.start()
    slowest = 0.0
    while worker.is_alive():
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        slowest = max(slowest, time.monotonic() - start)
        time.sleep(0.02)
    worker.join()
    assert result["status"] == 400 and "context" in _envelope(result["body"])
    assert slowest < 1.0, f"/health took {slowest:.2f} s while the prompt was handled"


def test_a_non_streamed_client_that_leaves_frees_its_slot(setup):
    engine = setup["engine"]
    before = engine.tokens_generated
    body = json.dumps({"model": "tiny", "prompt": "Keep going", "max_tokens": 240, "temperature": 0}).encode()
    s = socket.create_connection(("127.0.0.1", setup["server"].port), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert _wait(lambda: engine.load()["running"] == 1, 10), "the request never started decoding"
    s.close()  # the client goes away without reading the answer
    assert _wait(lambda: engine.load()["running"] == 0 and engine.prefilling is None, 2.0)
    assert engine.tokens_generated - before < 240  # cancelled, not run to max_tokens


@pytest.mark.parametrize("body, field", [
    ({"model": 5, "prompt": "x"}, "'model'"),
    ({"model": "tiny", "prompt": "x", "seed": 2**70, "temperature": 1}, "'seed'"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 5.0}, "'max_tokens'"),
    ({"model": "tiny", "prompt": "x", "max_tokens": True}, "'max_tokens'"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 10**30}, "'max_tokens'"),
    ({"model": "tiny", "prompt": "x", "stop": {"a": 1}}, "'stop'"),
    ({"model": "tiny", "prompt": "x", "n": 2}, "'n'"),
    ({"model": "tiny", "prompt": "x", "logprobs": "yes"}, "'logprobs'"),
    ({"model": "tiny", "prompt": "x", "logprobs": 3}, "'logprobs'"),
    ({"model": "tiny", "prompt": "x", "stream_options": 3}, "'stream_options'"),
    ({"model": "tiny", "prompt": "x", "presence_penalty": 9}, "'presence_penalty'"),
    ({"model": "tiny", "prompt": "\ud800"}, "surrogate"),
    ({"model": "tiny", "prompt": "x", "temperature": float("nan")}, "'temperature'"),
    ({"model": "tiny", "messages": "hi"}, "'messages'"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "\udfff"}]}, "surrogate"),
])
def test_wrong_fields_are_400s_naming_the_field(setup, body, field):
    from fastapi.testclient import TestClient

    client = TestClient(setup["app"], raise_server_exceptions=False)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400 and field in _envelope(r.json())


def test_a_tiny_temperature_samples_greedily(setup):
    from fastapi.testclient import TestClient

    # found by bench/fuzz_server.py: logits / 1e-38 overflow, the softmax is NaN, the sampler raised (500)
    client = TestClient(setup["app"], raise_server_exceptions=False)
    answers = [client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4,
                                                   "temperature": t}) for t in (1.17e-38, 0)]
    assert [r.status_code for r in answers] == [200, 200], answers[0].text
    assert answers[0].json()["choices"][0]["text"] == answers[1].json()["choices"][0]["text"]


@pytest.mark.parametrize("name", ["new.1", "a0\n"])
def test_adapter_names_torch_cannot_hold_are_400s(setup, name):
    from fastapi.testclient import TestClient

    # found by bench/fuzz_server.py: '.' passed the name check, then torch's module dict raised (500)
    client = TestClient(setup["app"], raise_server_exceptions=False)
    r = client.post("/v1/adapters/combine", json={"name": name, "adapters": {"a0": 1.0}})
    assert r.status_code == 400 and "invalid" in _envelope(r.json())


def test_chat_without_max_tokens_fits_a_small_context(model_tok):
    from fastapi.testclient import TestClient

    from lorakit.infer.engine import Engine
    from lorakit.infer.server import create_app

    engine = Engine(*model_tok, max_batch=1, max_context=64)
    try:
        client = TestClient(create_app(engine, "tiny"), raise_server_exceptions=False)
        r = client.post("/v1/chat/completions", json={"model": "tiny", "temperature": 0,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text  # the default of 512 tokens is capped by the context
    finally:
        engine.close()


def test_an_unexpected_fault_is_a_json_500_logged_here(model_tok, caplog):
    from fastapi.testclient import TestClient

    from lorakit.infer.engine import Engine
    from lorakit.infer.server import create_app

    model, tok = model_tok
    engine = Engine(model, tok, max_batch=1, max_context=64)
    try:
        app = create_app(engine, "tiny")

        @app.get("/fault")  # a route that fails as a bug would: the server must still answer in the envelope
        async def fault():
            raise RuntimeError("secret internal detail")

        with caplog.at_level(logging.ERROR, logger="lorakit.infer"):
            r = TestClient(app, raise_server_exceptions=False).get("/fault")
        assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
        assert "internal server error" in _envelope(r.json())
        assert any("secret internal detail" in (rec.exc_text or "") for rec in caplog.records)
        for path in ("/no-such-route", "/v1/completions/"):
            r = TestClient(app).get(path)
            assert r.status_code == 404 and _envelope(r.json())
        r = TestClient(app).get("/v1/completions")
        assert r.status_code == 405 and _envelope(r.json())
    finally:
        engine.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch": 0}, "max_batch"), ({"max_queue": 0}, "max_queue"), ({"max_context": 0}, "max_context"),
    ({"max_context": 1}, "max_context"), ({"max_batch": -3}, "max_batch"), ({"prefill_chunk": 0}, "prefill_chunk"),
    ({"max_batch": 2.5}, "max_batch"), ({"max_batch": 10**9}, "KV cache"),
])
def test_engine_refuses_sizes_that_cannot_serve(model_tok, kwargs, message):
    from lorakit.errors import LorakitError
    from lorakit.infer.engine import Engine

    model, tok = model_tok
    with pytest.raises(LorakitError, match=message):
        Engine(model, tok, **{"max_context": 64, **kwargs})


@pytest.mark.parametrize("argv, option", [
    (["serve", "--max-batch", "0"], "--max-batch"), (["serve", "--max-queue", "0"], "--max-queue"),
    (["serve", "--max-context", "0"], "--max-context"), (["serve", "--max-batch", "-1"], "--max-batch"),
    (["serve", "--port", "70000"], "--port"), (["serve", "--max-queue", "many"], "--max-queue"),
    (["serve", "--shutdown-timeout", "-1"], "--shutdown-timeout"),
    (["generate", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "--prompt", "x", "--max-context", "-5"], "--max-context"),
    (["generate", "--prompt", "x", "--temperature", "nan"], "--temperature"),
    (["generate", "--prompt", "x", "--top-p", "inf"], "--top-p"),
    (["generate", "--prompt", "x", "--seed", str(2**70)], "--seed"),
])
def test_cli_refuses_bad_numbers_in_one_line_before_loading(argv, option, capsys):
    from lorakit.cli import main

    # a model that does not exist: the option's error must come first, before any load
    with pytest.raises(SystemExit) as exit_:
        main([argv[0], "--model", "/nonexistent/model", *argv[1:]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and option in err and err.count("\n") == 1, err


def test_a_full_queue_answers_503(model_tok):
    from lorakit.infer.engine import Engine
    from lorakit.infer.server import create_app

    model, tok = model_tok
    engine = Engine(model, tok, max_batch=1, max_context=256, max_queue=1)
    server = LiveServer(create_app(engine, "tiny"))
    socks = []
    try:
        body = json.dumps({"model": "tiny", "prompt": "Keep going", "max_tokens": 240, "temperature": 0}).encode()
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        for want in ("running", "waiting"):  # one decoding, one queued behind it
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            socks[-1].sendall(head + body)
            assert _wait(lambda: engine.load()[want] == 1, 10)
        status, answer = _raw(server.port, head, body)
        assert status == 503 and "queued" in _envelope(answer)
    finally:
        for s in socks:
            s.close()
        server.stop()
        engine.close()


def test_shutdown_ends_within_its_timeout_despite_a_stalled_client(model_tok):
    import uvicorn

    from lorakit.infer.cli import uvicorn_config
    from lorakit.infer.engine import Engine
    from lorakit.infer.server import create_app
    from tests.infer.conftest import free_port

    model, tok = model_tok
    engine = Engine(model, tok, max_batch=1, max_context=64)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(engine, "tiny"), "127.0.0.1", port, max_batch=1, max_queue=1,
                                           shutdown_timeout=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert _wait(lambda: server.started, 20)
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        # a body that never finishes arriving: its handler waits on it
        stalled.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"mo")
        time.sleep(0.2)
        start = time.monotonic()
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        thread.join(timeout=10)
        assert not thread.is_alive(), "shutdown waited on the stalled client past its timeout"
        assert time.monotonic() - start < 5
        stalled.close()
    finally:
        server.should_exit = True
        engine.close()
