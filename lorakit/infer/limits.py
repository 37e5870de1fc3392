"""The server's input limits: request body size and read time, JSON nesting, prompt length.

Each limit is checked before the work it protects: the body is read in chunks and refused as
soon as it passes `MAX_BODY_BYTES` (or at once when its Content-Length says it will), JSON too
deeply nested is refused without a RecursionError, and a prompt whose character count cannot
fit in the context is refused before it is tokenized. `lorakit serve --help` and the README's
serve section state these limits; keep them in step.
"""

from __future__ import annotations

import json

from lorakit.errors import LorakitError

# this module imports nothing heavy (no torch), so `lorakit serve --help` can state its limits

MAX_BODY_BYTES = 4 * 2**20     # far above any prompt that fits a supported context, far below harm
BODY_READ_TIMEOUT_S = 30.0     # a client that sends its body slower than this holds a slot for nothing
MAX_JSON_DEPTH = 32            # OpenAI's bodies nest a handful of levels (messages -> parts -> part)


class BodyTooLargeError(LorakitError):
    status = 413  # the HTTP status the server answers with, as `request.EngineError` has


class BodyTimeoutError(LorakitError):
    status = 408


async def read_body(request, limit: int = MAX_BODY_BYTES, timeout: float = BODY_READ_TIMEOUT_S) -> bytes:
    """The request body, read chunk by chunk; refused past `limit` bytes or after `timeout` seconds."""
    import anyio

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the request body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout):  # asyncio.timeout needs Python 3.11
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # stop reading here: the rest of the body is never buffered
                    raise BodyTooLargeError(f"the request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {timeout:g} seconds") from None
    return b"".join(chunks)


def _depth(value) -> int:
    """Nesting depth of a decoded JSON value, without recursion (a scalar is depth 0)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            todo.extend((v, depth + 1) for v in item)
    return deepest


def decode_json(body: bytes):
    """The decoded body; `LorakitError` (HTTP 400) when it is not JSON or is nested too deeply."""
    try:
        value = json.loads(body)
    except RecursionError:  # the C decoder recurses per level: '[' * 100000 ends here
        raise LorakitError(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise LorakitError(f"the request body is not valid JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise LorakitError(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def max_token_chars(tokenizer) -> int:
    """The most characters of text one token of `tokenizer` stands for (its longest vocabulary entry).

    Byte-level BPE vocabularies spell each byte as one character and SentencePiece ones each
    character as one (byte-fallback tokens such as ``<0x0A>`` overcount), so no token covers
    more text than its entry is long, and a text of `n` characters has at least
    ``n / max_token_chars`` tokens.
    """
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        vocab = None
    longest = max((len(t) for t in vocab), default=0) if vocab else 0
    return max(longest, 1) if vocab else 0


def check_prompt_chars(chars: int, max_context: int, per_token: int) -> None:
    """Refuse, before tokenizing, a text of `chars` characters that cannot fit in `max_context` tokens.

    `per_token` is `max_token_chars` (0: unknown, no check). The text needs at least
    ``chars / per_token`` tokens and the context holds ``max_context - 1`` of prompt.
    """
    from lorakit.infer.request import PromptTooLongError

    if per_token and chars > (max_context - 1) * per_token:
        raise PromptTooLongError(f"the prompt has {chars} characters, more than the context of {max_context} tokens "
                                 "can hold; shorten the prompt")
