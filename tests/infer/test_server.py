"""The OpenAI-compatible server, driven by the official `openai` client over loopback."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from tests.infer import http as httpx

GREEDY = {"temperature": 0, "max_tokens": 16}


def chat(client, model: str, text: str, **kw) -> str:
    resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **{**GREEDY, **kw})
    return resp.choices[0].message.content


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny" and {"a0", "a1", "a2"} <= set(ids)


def test_chat_and_completion_streaming_equal_non_streaming(client):
    full = chat(client, "a0", "Hello there")
    stream = client.chat.completions.create(model="a0", messages=[{"role": "user", "content": "Hello there"}],
                                            stream=True, stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-1].usage.completion_tokens > 0
    done = client.completions.create(model="tiny", prompt="The weather today", **GREEDY)
    streamed = client.completions.create(model="tiny", prompt="The weather today", stream=True, **GREEDY)
    parts = list(streamed)
    assert "".join(p.choices[0].text for p in parts) == done.choices[0].text
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.prompt_tokens > 0
    assert parts[-1].choices[0].finish_reason == done.choices[0].finish_reason


def test_mixed_batch_of_32_equals_each_request_alone(client, served):
    models = ["tiny", "a0", "a1", "a2", "tiny", "a0", "a1", "a2"]
    jobs = [(models[i % 8] if i % 5 else "tiny", f"Question {i}: what is {i} plus {i}?") for i in range(32)]
    # four adapters: load a3 too, so base + 4 adapters are mixed
    httpx.post(served["url"] + "/v1/adapters", json={"name": "b3", "path": "a3"}).raise_for_status()
    jobs = [("b3", text) if i % 7 == 3 else (m, text) for i, (m, text) in enumerate(jobs)]
    assert {m for m, _ in jobs} == {"tiny", "a0", "a1", "a2", "b3"}
    with cf.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda job: chat(client, *job), jobs))
    alone = [chat(client, *job) for job in jobs]
    assert together == alone
    # the adapters really differ, so a row served with the wrong adapter would be caught
    assert len({chat(client, m, "Same prompt") for m in ("tiny", "a0", "a1", "a2", "b3")}) == 5
    httpx.delete(served["url"] + "/v1/adapters/b3").raise_for_status()


def test_bad_inputs(client, served):
    import openai

    url = served["url"]
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="'nope' not found"):
        chat(client, "nope", "hi")
    with pytest.raises(openai.BadRequestError, match="context holds 128"):
        client.completions.create(model="tiny", prompt="word " * 300, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, "tiny", "hi", temperature=5)
    r = httpx.post(url + "/v1/adapters", json={"name": "evil", "path": "../../etc"})
    assert r.status_code == 403 and "outside the adapter root" in r.json()["error"]["message"]
    before = [m.id for m in client.models.list().data]
    answer_before = chat(client, "a0", "Stable?")
    r = httpx.post(url + "/v1/adapters", json={"name": "alien", "path": "alien"})
    assert r.status_code == 422 and "different base model" in r.json()["error"]["message"]
    assert [m.id for m in client.models.list().data] == before
    assert chat(client, "a0", "Stable?") == answer_before
    r = httpx.post(url + "/v1/adapters", json={"name": "missing", "path": "no-such-dir"})
    assert r.status_code == 404
    r = httpx.post(url + "/v1/adapters", json={"name": "a0", "path": "a0"})
    assert r.status_code == 409
    assert httpx.delete(url + "/v1/adapters/nope").status_code == 404


def test_api_key(served):
    import openai

    bad = openai.OpenAI(base_url=served["keyed_url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        bad.models.list()
    good = openai.OpenAI(base_url=served["keyed_url"] + "/v1", api_key="sesame", max_retries=0)
    assert good.models.list().data[0].id == "tiny"
    assert httpx.get(served["keyed_url"] + "/health").json()["status"] == "ok"


def test_disconnect_mid_stream_frees_the_slot(client, served):
    engine = served["engine"]
    import http.client
    import json
    import time

    generated_before = engine.tokens_generated
    conn = http.client.HTTPConnection("127.0.0.1", int(served["url"].rsplit(":", 1)[1]), timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": "tiny", "prompt": "Keep going", "max_tokens": 120, "temperature": 0, "stream": True}),
        headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: ")  # the first token arrived: the request holds a slot
    assert engine.load()["running"] == 1
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    deadline = time.monotonic() + 10
    while engine.load()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.load()["running"] == 0 and engine.prefilling is None
    assert engine.tokens_generated - generated_before < 120  # stopped early, not run to max_tokens


def test_hot_load_and_unload_under_load(client, served):
    import openai

    url = served["url"]
    with cf.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(chat, client, "a1", f"long {i}", max_tokens=60) for i in range(6)]
        r = httpx.post(url + "/v1/adapters", json={"name": "hot", "path": "a3"})
        assert r.status_code == 201 and r.json()["load_ms"] < 1000
        hot = pool.submit(chat, client, "hot", "fresh")
        assert httpx.delete(url + "/v1/adapters/a1").status_code == 200  # a1 requests are still in flight
        with pytest.raises(openai.NotFoundError):
            chat(client, "a1", "too late")
        assert all(isinstance(f.result(timeout=60), str) for f in running)  # in-flight a1 requests finished
        assert isinstance(hot.result(timeout=60), str)
    assert "a1" not in [m.id for m in client.models.list().data]
    # put a1 back for other tests in this module
    assert httpx.post(url + "/v1/adapters", json={"name": "a1", "path": "a1"}).status_code == 201
    httpx.delete(url + "/v1/adapters/hot").raise_for_status()


def test_weighted_combinations(client, served):
    from lorakit.adapters import adapter_layers

    url = served["url"]
    r = httpx.post(url + "/v1/adapters/combine", json={"name": "mix", "adapters": {"a0": 0.7, "a2": -0.4}})
    assert r.status_code == 201, r.text
    model = served["engine"].model
    for _, layer in adapter_layers(model):
        if "mix" in layer.r:
            expected = 0.7 * layer.delta_weight("a0") - 0.4 * layer.delta_weight("a2")
            assert (layer.delta_weight("mix") - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert isinstance(chat(client, "mix", "blend"), str)
    r = httpx.post(url + "/v1/adapters/combine",
                   json={"name": "tied", "adapters": {"a0": 1.0, "a2": 1.0}, "method": "ties", "density": 0.3})
    assert r.status_code == 201, r.text
    assert isinstance(chat(client, "tied", "blend"), str)
    r = httpx.post(url + "/v1/adapters/combine", json={"name": "bad", "adapters": {"a0": 1.0}, "method": "magic"})
    assert r.status_code == 400 and "unknown combination method" in r.json()["error"]["message"]
    for name in ("mix", "tied"):
        httpx.delete(url + f"/v1/adapters/{name}").raise_for_status()
