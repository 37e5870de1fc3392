"""OpenAI-compatible HTTP server over the engine (FastAPI), with adapter admin and a playground.

Bodies are parsed by hand rather than by FastAPI's models so that malformed JSON and bad
fields answer 400 with OpenAI's error envelope (FastAPI would answer 422). Anything that
waits on the model runs in a thread (or the engine's worker), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from lorakit.adapters import adapters
from lorakit.errors import LorakitError
from lorakit.infer import hotswap, openai_api
from lorakit.infer.engine import Engine
from lorakit.infer.prompts import encode_chat, encode_prompt, normalize_messages
from lorakit.infer.request import EngineError, Event, UnknownAdapterError

PLAYGROUND = Path(__file__).with_name("playground.html")


class AuthError(EngineError):
    status = 401


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse(openai_api.error_body(message, status), status_code=status)


async def _json(request: Request):
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LorakitError(f"the request body is not valid JSON ({exc})") from None


def create_app(engine: Engine, base_name: str, *, api_key: str | None = None,
               adapter_root: str | Path | None = None) -> FastAPI:
    """The FastAPI app serving `engine`; `base_name` is the `model` value that selects the base."""
    app = FastAPI(title="lorakit", docs_url=None, redoc_url=None, openapi_url=None)
    reserved = {base_name}

    @app.exception_handler(LorakitError)
    async def _user_error(_request: Request, exc: LorakitError):
        return _error(str(exc), getattr(exc, "status", 400))

    async def check_key(request: Request) -> None:
        if api_key:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                raise AuthError("missing or wrong API key: send 'Authorization: Bearer <key>'")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    def adapter_for(model: str) -> str | None:
        if model == base_name:
            return None
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
        parsed = openai_api.parse(await _json(request), chat, engine.max_context)
        adapter = adapter_for(parsed.model)
        if chat:
            ids = encode_chat(engine.tokenizer, normalize_messages(parsed.messages))
        else:
            ids = encode_prompt(engine.tokenizer, parsed.prompt)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        req = engine.submit(ids, adapter, parsed.params, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        rid = openai_api.new_id(chat)
        if parsed.stream:
            return StreamingResponse(_sse(engine, req, events, rid, parsed, chat), media_type="text/event-stream")
        text = []
        try:
            while (event := await events.get()).kind == "token":
                text.append(event.text)
        finally:
            if not req.finished:  # the client went away while waiting
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
        loaded = adapters(engine.model)
        return {"object": "list", "data": [
            {"name": n, "r": loaded[n].config.r, "alpha": loaded[n].config.alpha, "modules": len(loaded[n].modules)}
            for n in engine.public_adapters if n in loaded]}

    @v1.post("/adapters", status_code=201)
    async def load_adapter(request: Request):
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(body.get("path"), str):
            raise LorakitError("send {\"name\": NAME, \"path\": DIR} (DIR relative to the adapter root)")
        if adapter_root is None:
            raise hotswap.AdapterForbiddenError("loading adapters over HTTP is off; restart with --adapter-root DIR")
        started = time.perf_counter()
        await run_in_threadpool(hotswap.load, engine, body["name"], body["path"], root=adapter_root, reserved=reserved)
        # 201 once checked, built and queued: requests sent from now on run with the adapter
        return JSONResponse({"name": body["name"], "load_ms": round(1000 * (time.perf_counter() - started), 2)},
                            status_code=201)

    @v1.delete("/adapters/{name}")
    async def unload_adapter(name: str):
        await run_in_threadpool(hotswap.unload, engine, name)
        return {"name": name, "deleted": True}

    @v1.post("/adapters/combine", status_code=201)
    async def combine(request: Request):
        body = await _json(request)
        weights = body.get("adapters") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(weights, dict):
            raise LorakitError("send {\"name\": NEW, \"adapters\": {NAME: WEIGHT, ...}, \"method\": \"linear\"|\"ties\"}")
        density = body.get("density", 0.5)
        if isinstance(density, bool) or not isinstance(density, (int, float)):
            raise LorakitError("'density' must be a number in (0, 1]")
        rank = body.get("rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
            raise LorakitError("'rank' must be an integer")
        await run_in_threadpool(hotswap.combine, engine, body["name"], weights, method=body.get("method", "linear"),
                                density=float(density), rank=rank, reserved=reserved)
        return JSONResponse({"name": body["name"], "method": body.get("method", "linear")}, status_code=201)

    app.include_router(v1)
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
