"""Every endpoint fuzzed: arbitrary JSON, real field names with wrong-typed values, raw bytes.

Properties: the answer is 2xx or 4xx (never 5xx), a non-2xx body is OpenAI's error envelope,
the server still answers /health, and nothing under the adapter root changed.

The API's bodies are parsed by hand (see `lorakit.infer.server`), so it publishes no OpenAPI
schema with the fields in it, and a schema-driven fuzzer (schemathesis) would see only opaque
bodies; the strategies here are built from the field tables in `lorakit.infer.openai_api`
instead. bench/fuzz_server.py runs the same properties with many more examples.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.infer import openai_api

# text that breaks naive handling: unpaired surrogates (JSON's escapes can spell them; hypothesis'
# text() never draws them), NUL, a chat template's own markers
NASTY_TEXT = st.sampled_from(["\ud800", "a\udfffb", "\x00", "a\x00b", "<|im_start|>", "\u202e", "%2F", "\n" * 30])
TEXT = st.text(max_size=20) | NASTY_TEXT
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**200)
           | st.sampled_from([2**64, -(2**63) - 1, 10**30])
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -0.0, 5e-324]) | TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# raw bodies: bytes, text, and JSON that is deep or has a huge number (json.loads refuses > 4300 digits)
RAW = (st.binary(max_size=200) | st.text(max_size=100).map(str.encode)
       | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n) | st.integers(1, 3000).map(lambda n: b'{"a":' * n)
       | st.sampled_from([b"1" * 5000, b'{"model": "tiny", "prompt": "\\ud800"}', b"NaN", b'"\\u0000"']))
# plausible values per field kind, so bodies also get past the type checks into the engine
PLAUSIBLE = {
    "string": st.sampled_from(["tiny", "a0", "a1", "nope", "", "linear", "ties", "fresh"]) | TEXT,
    "integer": st.integers(-3, 8) | st.sampled_from([2**63, -(2**63) - 1, 10**30]),
    "number": st.floats(-3, 3) | st.sampled_from([0.0, 1.0, math.nan, math.inf]),
    "boolean": st.booleans(),
    "object": st.dictionaries(st.sampled_from(["a0", "a1", "a2", "nope", "include_usage"]),
                              st.floats(-12, 12) | st.booleans() | JSON_VALUES, max_size=3),
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=10),
    "prompt": TEXT | st.lists(st.integers(-2, 60000), max_size=8) | st.just(["hi"]) | st.just("word " * 5000)
              | st.lists(st.integers(0, 9), min_size=70, max_size=70),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user"] * 4 + ["system", "assistant",
                                                                                        "tool", 3]),
                                                "content": TEXT | JSON_VALUES}), max_size=3),
}
PATHS = st.sampled_from(["a0", "a3", "alien", ".", "..", "../..", "/etc", "", "a0/..", "a3/adapter_config.json",
                         "x" * 300, "x" * 5000, "nope", "a0/" * 50]) | TEXT


@st.composite
def field_bodies(draw, fields: dict[str, str], base: dict) -> dict:
    """A valid body (`base`: field -> strategy), then a few other real fields with values of
    their kind, then maybe one field set to an arbitrary JSON value: so bodies get past the
    type checks into the engine as well as failing each of them."""
    body = draw(st.fixed_dictionaries(base))
    names = sorted(fields)
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        body[name] = draw(PLAUSIBLE[fields[name]])
    if draw(st.booleans()):
        body[draw(st.sampled_from(names))] = draw(JSON_VALUES)
    return body


MODELS = st.sampled_from(["tiny", "a0", "a1", "a2"])
NEW_NAMES = st.sampled_from(["fresh", "new.1", "a0", "tiny"]) | st.from_regex(r"\A[a-z][a-z0-9._-]{0,8}\Z") | TEXT
# the short generations keep each example fast: max_tokens is small unless a field draw replaces it
ENDPOINTS = {
    "/v1/completions": field_bodies(openai_api.COMPLETION_FIELDS, {
        "model": MODELS, "prompt": PLAUSIBLE["prompt"], "max_tokens": st.integers(1, 4)}),
    "/v1/chat/completions": field_bodies(openai_api.CHAT_FIELDS, {
        "model": MODELS, "messages": PLAUSIBLE["messages"], "max_tokens": st.integers(1, 4)}),
    "/v1/adapters": field_bodies(openai_api.ADAPTER_FIELDS, {"name": NEW_NAMES, "path": PATHS}),
    "/v1/adapters/combine": field_bodies(openai_api.COMBINE_FIELDS, {
        "name": NEW_NAMES, "adapters": st.dictionaries(st.sampled_from(["a0", "a1", "a2", "nope"]),
                                                       st.floats(-12, 12), max_size=3)}),
}


def encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def problem(resp) -> str | None:
    """What is wrong with an answer under the properties, or None."""
    if resp.status_code >= 500 or resp.status_code < 200 or 300 <= resp.status_code < 400:
        return f"status {resp.status_code}: {resp.text[:200]}"
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            return f"status {resp.status_code} without a JSON body: {resp.text[:200]}"
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict) or not isinstance(err.get("message"), str) or "type" not in err:
            return f"status {resp.status_code} without the error envelope: {resp.text[:200]}"
    return None


def tree_digest(root: Path) -> str:
    """A digest of every file's path and bytes under `root`."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def build(tiny_dir, adapter_root, max_context: int = 64):
    """(engine, app) on the tiny model with a0, a1, a2 loaded and `adapter_root` as the load root."""
    from lorakit.adapters import load_adapter
    from lorakit.infer.engine import Engine
    from lorakit.infer.server import create_app
    from lorakit.models import load_model

    model, tok = load_model(tiny_dir)
    for name in ("a0", "a1", "a2"):
        load_adapter(model, adapter_root / name, name)
    engine = Engine(model, tok, max_batch=4, max_context=max_context, max_queue=16)
    return engine, create_app(engine, "tiny", adapter_root=adapter_root)


@pytest.fixture(scope="module")
def fuzzed(tiny_dir, adapter_root):
    from fastapi.testclient import TestClient

    engine, app = build(tiny_dir, adapter_root)
    before = tree_digest(adapter_root)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    engine.close()
    assert tree_digest(adapter_root) == before, "a request changed files under the adapter root"


def check(client, method: str, path: str, content: bytes | None = None) -> None:
    resp = client.request(method, path, content=content, headers={"content-type": "application/json"})
    assert problem(resp) is None, f"{method} {path} {content[:300] if content else ''!r}: {problem(resp)}"
    assert client.get("/health").status_code == 200


FUZZ = settings(derandomize=True, deadline=None, max_examples=50,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("path", list(ENDPOINTS))
@FUZZ
@given(data=st.data())
def test_field_bodies(fuzzed, path, data):
    check(fuzzed, "POST", path, encode(data.draw(ENDPOINTS[path])))


@pytest.mark.parametrize("path", list(ENDPOINTS))
@FUZZ
@given(value=JSON_VALUES)
def test_arbitrary_json(fuzzed, path, value):
    check(fuzzed, "POST", path, encode(value))


@pytest.mark.parametrize("path", list(ENDPOINTS))
@FUZZ
@given(raw=RAW)
def test_raw_bytes(fuzzed, path, raw):
    check(fuzzed, "POST", path, raw)


@FUZZ
@given(name=TEXT | st.sampled_from(["nope", "tiny", "..", "a/b", " ", "x" * 5000]))
def test_delete_any_name(fuzzed, name):
    # surrogatepass: a surrogate goes out as the invalid UTF-8 it would be on the wire
    check(fuzzed, "DELETE", "/v1/adapters/" + quote(name, safe="", errors="surrogatepass"))
