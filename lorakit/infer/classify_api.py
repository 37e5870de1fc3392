"""vLLM's classification API: ``POST /classify`` (and ``/v1/classify``) request fields and answer shape.

A request names a classifier (``model``: a classification adapter, or a base that is a
classifier itself) and sends ``input``: a text, a list of texts, a list of token ids or a list
of such lists. The answer has one item per input, in order: the most probable class's name
(``label``), every class's probability (``probs``, the softmax of the logits; the logits
themselves with ``use_activation: false``) and ``num_classes``, with the prompt tokens counted in
``usage``, as vLLM answers. Texts are tokenized with the model's special tokens
(``add_special_tokens``, default true), as classification training frames them. An input longer
than the model takes is refused unless ``truncate_prompt_tokens`` says to keep its last tokens
(-1: as many as the model takes).

The runner behind the routes (`lorakit.infer.classifier_runner.SharedBaseClassifiers` on a
generation base, `lorakit.infer.classifier_model.ClassifierModel` on a classifier base) answers
``tokenizer``, ``max_tokens``, ``resolve(model, base_name)`` (the adapter to run, None for the
base, or an error) and ``classify(adapter, rows)`` (the logits and the class names).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lorakit.errors import LorakitError
from lorakit.infer import limits, openai_api
from lorakit.infer.prompts import check_text
from lorakit.infer.request import PromptTooLongError

# read and type-checked (null = not given); other fields are ignored, as for completions
CLASSIFY_FIELDS = {"model": "string", "input": "prompt", "user": "string", "truncate_prompt_tokens": "integer",
                   "add_special_tokens": "boolean", "use_activation": "boolean", "priority": "integer"}
INPUT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


@dataclass
class ClassifyRequest:
    """What a /classify body asks: the model's name, the inputs (texts or token-id lists), and how."""

    model: str
    inputs: list[str | list[int]]
    add_special_tokens: bool = True
    use_activation: bool = True
    truncate: int | None = None  # keep the last this many tokens (-1: as many as the model takes)


def _token_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def parse_classify(body) -> ClassifyRequest:
    """Validate a decoded /classify body; raises `LorakitError` (HTTP 400) naming the bad field."""
    body = openai_api.check_fields(body, CLASSIFY_FIELDS)
    model = body.get("model")
    if not model:
        raise LorakitError("'model' is required: a classification adapter's name (see GET /v1/models)")
    given = body.get("input")
    if given is None:
        raise LorakitError(f"'input' is required: {INPUT_SHAPES}")
    if isinstance(given, str) or _token_list(given) and given:
        inputs = [given]
    elif isinstance(given, list) and given and all(isinstance(x, str) for x in given):
        inputs = list(given)
    elif isinstance(given, list) and given and all(_token_list(x) for x in given):
        inputs = [list(x) for x in given]
    elif isinstance(given, list) and not given:
        raise LorakitError("'input' is empty: send at least one text")
    else:
        raise LorakitError(f"'input' must be {INPUT_SHAPES}, not a mix")
    for i, item in enumerate(inputs):
        where = "input" if len(inputs) == 1 else f"input[{i}]"
        if not item:
            raise LorakitError(f"{where} is empty: send text (or token ids) to classify")
        if isinstance(item, str):
            check_text(item, where)
    truncate = body.get("truncate_prompt_tokens")
    if truncate is not None and not (truncate == -1 or truncate >= 1):
        raise LorakitError(f"'truncate_prompt_tokens' must be -1 (as many as the model takes) or at least 1, "
                           f"got {truncate}")
    return ClassifyRequest(model, inputs, add_special_tokens=body.get("add_special_tokens") is not False,
                           use_activation=body.get("use_activation") is not False, truncate=truncate)


def encode_inputs(tokenizer, req: ClassifyRequest, max_tokens: int, per_token: int) -> list[list[int]]:
    """Token ids of each input, refusing (`PromptTooLongError`) one over `max_tokens` unless the
    request truncates; a text that cannot fit is refused before it is tokenized (`per_token`:
    `limits.max_token_chars`, 0 for unknown). The server runs this in a thread."""
    keep = None if req.truncate is None else max_tokens if req.truncate == -1 else min(req.truncate, max_tokens)
    vocab = len(tokenizer)
    rows = []
    for i, item in enumerate(req.inputs):
        where = "input" if len(req.inputs) == 1 else f"input[{i}]"
        if isinstance(item, str):
            if keep is None and per_token and len(item) > max_tokens * per_token:
                raise PromptTooLongError(f"{where} has {len(item)} characters, more than {max_tokens} tokens can "
                                         "hold; shorten it or send truncate_prompt_tokens")
            ids = tokenizer(item, add_special_tokens=req.add_special_tokens)["input_ids"]
        else:
            bad = next((t for t in item if not 0 <= t < vocab), None)
            if bad is not None:
                raise LorakitError(f"{where} holds token id {bad}, outside the vocabulary of {vocab}")
            ids = list(item)
        if keep is not None:
            ids = ids[-keep:]
        if not ids:
            raise LorakitError(f"{where} has no tokens: send text to classify")
        if len(ids) > max_tokens:
            raise PromptTooLongError(f"{where} has {len(ids)} tokens but the model takes at most {max_tokens}; "
                                     "shorten it or send truncate_prompt_tokens")
        rows.append(ids)
    return rows


def new_id() -> str:
    return "classify-" + uuid.uuid4().hex


def classification(rid: str, model: str, logits: torch.Tensor, labels: list[str], rows: list[list[int]],
                   use_activation: bool = True) -> dict:
    """The /classify answer for `logits` (N, K) of `rows` (their token ids, for usage)."""
    scores = torch.softmax(logits.double(), -1) if use_activation else logits.double()
    best = logits.argmax(-1).tolist()
    data = [{"index": i, "label": labels[b], "probs": s.tolist(), "num_classes": len(labels)}
            for i, (b, s) in enumerate(zip(best, scores))]
    tokens = sum(len(r) for r in rows)
    return {"id": rid, "object": "list", "created": int(time.time()), "model": model, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                      "prompt_tokens_details": None}}


def add_classify_routes(app, dependencies: list, runner, base_name: str,
                        read_json: Callable[[Request], Awaitable[object]]) -> None:
    """Serve `runner` at ``POST /classify`` and ``POST /v1/classify`` (both behind `dependencies`,
    e.g. the API key check). Tokenizing and the model run in threads, never on the event loop."""
    router = APIRouter(dependencies=dependencies)
    per_token = limits.max_token_chars(runner.tokenizer)

    async def classify(request: Request):
        req = parse_classify(await read_json(request))
        adapter = runner.resolve(req.model, base_name)
        rows = await run_in_threadpool(encode_inputs, runner.tokenizer, req, runner.max_tokens, per_token)
        logits, labels = await run_in_threadpool(runner.classify, adapter, rows)
        return JSONResponse(classification(new_id(), req.model, logits, labels, rows, req.use_activation))

    for path in ("/classify", "/v1/classify"):
        router.add_api_route(path, classify, methods=["POST"])
    app.include_router(router)
