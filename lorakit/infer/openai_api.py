"""OpenAI's request fields and response shapes for completions and chat completions."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from lorakit.errors import LorakitError
from lorakit.infer.sampling import SamplingParams

DEFAULT_COMPLETION_TOKENS = 16   # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 512


@dataclass
class ParsedRequest:
    """The parts of a completion request the engine needs."""

    model: str
    params: SamplingParams
    stream: bool
    include_usage: bool
    prompt: object = None      # /v1/completions
    messages: object = None    # /v1/chat/completions


def _number(body: dict, key: str, default, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise LorakitError(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def parse(body, chat: bool, max_context: int) -> ParsedRequest:
    """Validate a decoded JSON body; raises `LorakitError` (HTTP 400) naming the bad field."""
    if not isinstance(body, dict):
        raise LorakitError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise LorakitError("'model' is required: the base model's name or an adapter's (see GET /v1/models)")
    if _number(body, "n", 1, int) != 1:
        raise LorakitError("'n' must be 1: send one request per completion")
    default = DEFAULT_CHAT_TOKENS if chat else DEFAULT_COMPLETION_TOKENS
    max_tokens = _number(body, "max_completion_tokens", None, int) if chat else None
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", default, int)
    if max_tokens > max_context:
        raise LorakitError(f"'max_tokens' is {max_tokens} but the context holds {max_context} tokens")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise LorakitError("'stop' must be a string or a list of strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise LorakitError(f"'seed' must be an integer, got {seed!r}")
    params = SamplingParams(max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0),
                            top_p=_number(body, "top_p", 1.0), seed=seed, stop=stop or [])
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise LorakitError("'stream' must be true or false")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    if chat:
        if "messages" not in body:
            raise LorakitError("'messages' is required")
        return ParsedRequest(model, params, stream, include_usage, messages=body["messages"])
    if "prompt" not in body:
        raise LorakitError("'prompt' is required")
    return ParsedRequest(model, params, stream, include_usage, prompt=body["prompt"])


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
            503: "server_overloaded"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}
