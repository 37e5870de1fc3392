"""OpenAI's request fields and response shapes for completions and chat completions."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from lorakit.errors import LorakitError
from lorakit.infer.sampling import SamplingParams

DEFAULT_COMPLETION_TOKENS = 16   # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 512


# The fields each endpoint reads and the JSON type each must have (null is taken as "not given"
# everywhere). Fields outside these tables are ignored, since SDKs add new ones; fields read but
# not implemented are type- and range-checked, then ignored, except where ignoring them would
# answer something else than was asked (n, best_of, echo, logprobs). tests/infer/test_server_fuzz.py
# builds its wrong-typed bodies from these tables.
COMMON_FIELDS = {"model": "string", "max_tokens": "integer", "temperature": "number", "top_p": "number",
                 "n": "integer", "stream": "boolean", "stream_options": "object", "stop": "stop",
                 "seed": "integer", "presence_penalty": "number", "frequency_penalty": "number",
                 "logit_bias": "object", "user": "string"}
COMPLETION_FIELDS = {**COMMON_FIELDS, "prompt": "prompt", "logprobs": "integer", "echo": "boolean",
                     "best_of": "integer", "suffix": "string"}
CHAT_FIELDS = {**COMMON_FIELDS, "messages": "messages", "max_completion_tokens": "integer",
               "logprobs": "boolean", "top_logprobs": "integer"}
ADAPTER_FIELDS = {"name": "string", "path": "string"}
COMBINE_FIELDS = {"name": "string", "adapters": "object", "method": "string", "density": "number", "rank": "integer"}

# A temperature this small samples as greedy: dividing logits by a tiny positive one overflows
# to inf, and the softmax of that is NaN (the sampler then raises).
GREEDY_BELOW = 1e-4
# torch.Generator.manual_seed takes seeds in [-2**63, 2**64)
SEED_RANGE = (-(2**63), 2**64 - 1)

_KINDS = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "object": (dict,),
          "stop": (str, list), "prompt": (str, list), "messages": (list,)}
_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
          "object": "a JSON object", "stop": "a string or a list of strings",
          "prompt": "a string or a list of token ids", "messages": "a list of messages"}


@dataclass
class ParsedRequest:
    """The parts of a completion request the engine needs."""

    model: str
    params: SamplingParams
    stream: bool
    include_usage: bool
    prompt: object = None      # /v1/completions
    messages: object = None    # /v1/chat/completions


def check_fields(body, fields: dict[str, str]) -> dict:
    """`body` as a dict whose fields named in `fields` have their JSON type (or are null).

    Raises `LorakitError` (HTTP 400) naming the first bad field. A bool is not a number here
    (Python's bool is an int), and a number must be finite.
    """
    if not isinstance(body, dict):
        raise LorakitError("the request body must be a JSON object")
    for key, kind in fields.items():
        value = body.get(key)
        if value is None:
            continue
        ok = isinstance(value, _KINDS[kind]) and (kind == "boolean" or not isinstance(value, bool))
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            raise LorakitError(f"'{key}' must be {_WORDS[kind]}, got {_short(value)}")
    return body


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _in_range(body: dict, key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is not None and not low <= value <= high:
        raise LorakitError(f"'{key}' must be between {low:g} and {high:g}, got {_short(value)}")


def parse(body, chat: bool, max_context: int) -> ParsedRequest:
    """Validate a decoded JSON body; raises `LorakitError` (HTTP 400) naming the bad field."""
    body = check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    model = body.get("model")
    if not model:
        raise LorakitError("'model' is required: the base model's name or an adapter's (see GET /v1/models)")
    for key in ("n", "best_of"):
        if body.get(key, 1) not in (None, 1):
            raise LorakitError(f"'{key}' must be 1: send one request per completion")
    if body.get("echo") or body.get("logprobs") or body.get("top_logprobs"):
        raise LorakitError("'logprobs', 'top_logprobs' and 'echo' are not supported by this server; leave them out")
    for key in ("presence_penalty", "frequency_penalty"):
        _in_range(body, key, -2.0, 2.0)
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:  # the default is capped by the context, so a small --max-context still answers
        max_tokens = min(DEFAULT_CHAT_TOKENS if chat else DEFAULT_COMPLETION_TOKENS, max_context)
    elif max_tokens > max_context:
        raise LorakitError(f"'max_tokens' is {max_tokens} but the context holds {max_context} tokens")
    seed = body.get("seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise LorakitError(f"'seed' must be a 64-bit integer, got {_short(seed)}")
    stop = body.get("stop")
    temperature = _or(body, "temperature", 1.0)
    if 0 < temperature < GREEDY_BELOW:  # the limit of sampling as the temperature falls is greedy
        temperature = 0.0
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature,
                            top_p=_or(body, "top_p", 1.0), seed=seed, stop=stop or [])
    options = body.get("stream_options") or {}
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise LorakitError("'stream_options.include_usage' must be true or false")
    stream = bool(body.get("stream"))
    if chat:
        if body.get("messages") is None:
            raise LorakitError("'messages' is required")
        return ParsedRequest(model, params, stream, bool(include_usage), messages=body["messages"])
    if body.get("prompt") is None:
        raise LorakitError("'prompt' is required")
    return ParsedRequest(model, params, stream, bool(include_usage), prompt=body["prompt"])


def _or(body: dict, key: str, default):
    value = body.get(key)
    return default if value is None else value


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(rid: str, model: str, text: str, finish: str | None, usage_: dict | None) -> dict:
    """A /v1/completions response (or, with usage None, a streamed chunk)."""
    out = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def chat_completion(rid: str, model: str, text: str, finish: str, usage_: dict) -> dict:
    """A non-streamed /v1/chat/completions response."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage_}


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None, usage_: dict | None = None,
               empty: bool = False) -> dict:
    """One streamed /v1/chat/completions chunk (``empty``: the final usage-only chunk)."""
    choices = [] if empty else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    out = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def error_body(message: str, status: int) -> dict:
    """OpenAI's error envelope."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 409: "conflict_error", 422: "invalid_request_error",
            405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
            503: "server_overloaded"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}
