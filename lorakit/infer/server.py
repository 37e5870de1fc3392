"""OpenAI-compatible HTTP server over the engine (FastAPI), with adapter admin and a playground.

Bodies are parsed by hand rather than by FastAPI's models so that malformed JSON and bad
fields answer 400 with OpenAI's error envelope (FastAPI would answer 422). Anything that
waits on the model, and anything whose cost grows with the input (decoding JSON, tokenizing),
runs in a thread (or the engine's worker), never on the event loop. Every answer that is not
2xx carries the envelope: refusals (4xx, see `lorakit.infer.limits` for the limits), unknown
routes, and unexpected faults (500, the traceback logged here, never sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorakit.adapters import adapters
from lorakit.errors import LorakitError
from lorakit.infer import hotswap, limits, openai_api
from lorakit.infer.classifier_runner import SharedBaseClassifiers, is_classification_adapter
from lorakit.infer.classify_api import add_classify_routes
from lorakit.infer.engine import Engine
from lorakit.infer.prompts import encode_checked
from lorakit.infer.request import EngineError, Event, UnknownAdapterError
from lorakit.infer.virtual_rows import virtual_rows

PLAYGROUND = Path(__file__).with_name("playground.html")
log = logging.getLogger("lorakit.infer")


class AuthError(EngineError):
    status = 401


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse(openai_api.error_body(message, status), status_code=status)


async def _json(request: Request, max_body: int = limits.MAX_BODY_BYTES):
    """The request's decoded JSON body, read within the size and time limits, decoded off the loop."""
    return await run_in_threadpool(limits.decode_json, await limits.read_body(request, max_body))


class _FaultsAsJSON:
    """ASGI middleware: an unexpected exception answers 500 in OpenAI's envelope and is logged
    with its traceback here (Starlette's default answers plain text)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # a stream already under way: nothing to answer with, end the connection
                raise
            await _error("internal server error; the server log has the details", 500)(scope, receive, send)


async def _until_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def app_shell(api_key: str | None = None):
    """``(app, check_key)``: an app whose every non-2xx answer carries OpenAI's envelope, and the
    dependency that checks `api_key` (a no-op without one)."""
    # redirect_slashes off: "/v1/completions/" answers 404 in the envelope, not a 307 to follow
    app = FastAPI(title="lorakit", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.add_middleware(_FaultsAsJSON)

    @app.exception_handler(LorakitError)
    async def _user_error(_request: Request, exc: LorakitError):
        return _error(str(exc), getattr(exc, "status", 400))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        response = _error(str(exc.detail), exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return _error(f"invalid request: {exc.errors()[:1]}", 400)

    async def check_key(request: Request) -> None:
        if api_key:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                raise AuthError("missing or wrong API key: send 'Authorization: Bearer <key>'")

    return app, check_key


def create_app(engine: Engine, base_name: str, *, api_key: str | None = None,
               adapter_root: str | Path | None = None, max_body: int = limits.MAX_BODY_BYTES,
               classifiers: SharedBaseClassifiers | None = None) -> FastAPI:
    """The FastAPI app serving `engine`; `base_name` is the `model` value that selects the base.

    `max_body`: the largest request body taken, in bytes (larger ones get 413). Classification
    adapters (SEQ_CLS) load beside the generation ones and answer /classify: `classifiers`
    holds those loaded already (`lorakit.infer.classifier_runner`).
    """
    app, check_key = app_shell(api_key)
    reserved = {base_name}
    per_token = limits.max_token_chars(engine.tokenizer)
    classifiers = classifiers or SharedBaseClassifiers(engine)

    async def body_of(request: Request, fields: dict[str, str]) -> dict:
        return openai_api.check_fields(await _json(request, max_body), fields)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    def adapter_for(model: str) -> str | None:
        if model == base_name:
            return None
        if classifiers.is_classifier(model):
            raise EngineError(f"model {model!r} is a sequence-classification adapter: it answers POST /v1/classify, "
                              "not text generation")
        if model not in engine.adapter_names():
            raise UnknownAdapterError(f"model {model!r} not found; use {base_name!r} or a loaded adapter "
                                      f"({', '.join(engine.adapter_names()) or 'none loaded'})")
        return model

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": base_name, "adapters": list(engine.adapter_names()), **engine.load()}

    @v1.get("/models")
    async def models():
        data = [{"id": base_name, "object": "model", "created": 0, "owned_by": "lorakit", "parent": None}]
        data += [{"id": n, "object": "model", "created": 0, "owned_by": "lorakit", "parent": base_name}
                 for n in engine.adapter_names()]
        return {"object": "list", "data": data}

    async def generate(request: Request, chat: bool):
        parsed = openai_api.parse(await _json(request, max_body), chat, engine.max_context)
        adapter = adapter_for(parsed.model)
        ids = await run_in_threadpool(encode_checked, engine.tokenizer, engine.max_context, per_token,
                                      prompt=parsed.prompt, messages=parsed.messages)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        req = engine.submit(ids, adapter, parsed.params, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        rid = openai_api.new_id(chat)
        if parsed.stream:
            return StreamingResponse(_sse(engine, req, events, rid, parsed, chat), media_type="text/event-stream")
        text = []
        # a client that leaves must not keep its batch slot until max_tokens: watch for it
        gone = asyncio.ensure_future(_until_disconnect(request))
        try:
            while True:
                nxt = asyncio.ensure_future(events.get())
                await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    return _error("the client closed the connection", 499)
                if (event := nxt.result()).kind != "token":
                    break
                text.append(event.text)
        finally:
            gone.cancel()
            if not req.finished:  # the client went away (or this task was cancelled) while waiting
                engine.cancel(req)
        if event.kind == "error":
            return _error(event.error or "generation failed", 500)
        use = openai_api.usage(event.prompt_tokens, event.completion_tokens)
        body = (openai_api.chat_completion(rid, parsed.model, "".join(text), event.finish_reason, use) if chat
                else openai_api.completion(rid, parsed.model, "".join(text), event.finish_reason, use))
        return JSONResponse(body)

    @v1.post("/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @v1.get("/adapters")
    async def list_adapters():
        loaded, virtual = adapters(engine.model), virtual_rows(engine.model)
        data = []
        for n in engine.public_adapters:
            if n in loaded:
                data.append({"name": n, "r": loaded[n].config.r, "alpha": loaded[n].config.alpha,
                             "modules": len(loaded[n].modules),
                             "task": "classify" if classifiers.is_classifier(n) else "generate"})
            elif n in virtual:  # prefix/prompt tuning: virtual tokens, no rank
                data.append({"name": n, "peft_type": virtual[n].peft_type,
                             "num_virtual_tokens": virtual[n].num_virtual_tokens, "task": "generate"})
        return {"object": "list", "data": data}

    @v1.post("/adapters", status_code=201)
    async def load_adapter(request: Request):
        body = await body_of(request, openai_api.ADAPTER_FIELDS)
        if not isinstance(body.get("name"), str) or not isinstance(body.get("path"), str):
            raise LorakitError("send {\"name\": NAME, \"path\": DIR} (DIR relative to the adapter root)")
        if adapter_root is None:
            raise hotswap.AdapterForbiddenError("loading adapters over HTTP is off; restart with --adapter-root DIR")
        started = time.perf_counter()

        def load() -> None:  # a SEQ_CLS adapter's head stays beside the engine's model (classifier_runner)
            if is_classification_adapter(adapter_root, body["path"]):
                classifiers.load(body["name"], body["path"], root=adapter_root, reserved=reserved)
            else:
                hotswap.load(engine, body["name"], body["path"], root=adapter_root, reserved=reserved)

        await run_in_threadpool(load)
        # 201 once checked, built and queued: requests sent from now on run with the adapter
        return JSONResponse({"name": body["name"], "load_ms": round(1000 * (time.perf_counter() - started), 2)},
                            status_code=201)

    @v1.delete("/adapters/{name}")
    async def unload_adapter(name: str):
        await run_in_threadpool(hotswap.unload, engine, name)
        return {"name": name, "deleted": True}

    @v1.post("/adapters/combine", status_code=201)
    async def combine(request: Request):
        body = await body_of(request, openai_api.COMBINE_FIELDS)
        weights, method = body.get("adapters"), body.get("method") or "linear"
        if not isinstance(body.get("name"), str) or not isinstance(weights, dict):
            raise LorakitError("send {\"name\": NEW, \"adapters\": {NAME: WEIGHT, ...}, \"method\": \"linear\"|\"ties\"}")
        if any(classifiers.is_classifier(n) for n in weights):
            raise LorakitError("classification adapters cannot be combined: their heads have no weighted sum here")
        density = body.get("density")
        if density is not None and not 0 < density <= 1:
            raise LorakitError(f"'density' must be a number in (0, 1], got {density!r}")
        await run_in_threadpool(hotswap.combine, engine, body["name"], weights, method=method,
                                density=0.5 if density is None else float(density), rank=body.get("rank"),
                                reserved=reserved)
        return JSONResponse({"name": body["name"], "method": method}, status_code=201)

    app.include_router(v1)
    add_classify_routes(app, [Depends(check_key)], classifiers, base_name, lambda r: _json(r, max_body))
    return app


async def _sse(engine: Engine, req, events: asyncio.Queue, rid: str, parsed, chat: bool):
    """Server-sent events in OpenAI's chunk format; a client that leaves cancels the request."""
    def line(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    try:
        if chat:
            yield line(openai_api.chat_chunk(rid, parsed.model, {"role": "assistant", "content": ""}, None))
        while True:
            event = await events.get()
            if event.kind == "token":
                yield line(openai_api.chat_chunk(rid, parsed.model, {"content": event.text}, None) if chat
                           else openai_api.completion(rid, parsed.model, event.text, None, None))
                continue
            if event.kind == "error":
                yield line(openai_api.error_body(event.error or "generation failed", 500))
                break
            use = openai_api.usage(event.prompt_tokens, event.completion_tokens)
            yield line(openai_api.chat_chunk(rid, parsed.model, {}, event.finish_reason) if chat
                       else openai_api.completion(rid, parsed.model, "", event.finish_reason, None))
            if parsed.include_usage:
                yield line(openai_api.chat_chunk(rid, parsed.model, {}, None, use, empty=True) if chat
                           else {**openai_api.completion(rid, parsed.model, "", None, use), "choices": []})
            break
        yield "data: [DONE]\n\n"
    finally:
        if not req.finished:
            engine.cancel(req)


__all__ = ["create_app", "EngineError"]
