"""The server for a classifier base (`lorakit.infer.classifier_model`): /classify, adapter admin,
and a clear 400 for text generation, which such a model cannot do.

Everything a client sees is as `lorakit.infer.server` answers it: OpenAI's error envelope on
every non-2xx answer, the same body limits and API key, the same adapter routes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lorakit.adapters import adapters
from lorakit.errors import LorakitError
from lorakit.infer import hotswap, limits, openai_api
from lorakit.infer.classifier_model import ClassifierModel
from lorakit.infer.classify_api import add_classify_routes
from lorakit.infer.request import EngineError
from lorakit.infer.server import _json, app_shell


def create_classifier_app(runner: ClassifierModel, base_name: str, *, api_key: str | None = None,
                          adapter_root: str | Path | None = None, max_body: int = limits.MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving classifier `runner`; `base_name` is the `model` value of the base."""
    app, check_key = app_shell(api_key)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])
    reserved = {base_name}

    def no_generation() -> None:
        raise EngineError(f"model {base_name!r} is a sequence classifier and cannot generate text: send "
                          "POST /v1/classify {\"model\": NAME, \"input\": TEXT} instead")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": base_name, "adapters": list(runner.names()), "task": "classify"}

    @v1.get("/models")
    async def models():
        data = [{"id": base_name, "object": "model", "created": 0, "owned_by": "lorakit", "parent": None}]
        data += [{"id": n, "object": "model", "created": 0, "owned_by": "lorakit", "parent": base_name}
                 for n in runner.names()]
        return {"object": "list", "data": data}

    @v1.post("/completions")
    async def completions():
        no_generation()

    @v1.post("/chat/completions")
    async def chat_completions():
        no_generation()

    @v1.get("/adapters")
    async def list_adapters():
        loaded = adapters(runner.model)
        return {"object": "list", "data": [
            {"name": n, "r": loaded[n].config.r, "alpha": loaded[n].config.alpha, "modules": len(loaded[n].modules),
             "task": "classify"} for n in runner.names() if n in loaded]}

    @v1.post("/adapters", status_code=201)
    async def load_adapter(request: Request):
        body = openai_api.check_fields(await _json(request, max_body), openai_api.ADAPTER_FIELDS)
        if not isinstance(body.get("name"), str) or not isinstance(body.get("path"), str):
            raise LorakitError("send {\"name\": NAME, \"path\": DIR} (DIR relative to the adapter root)")
        if adapter_root is None:
            raise hotswap.AdapterForbiddenError("loading adapters over HTTP is off; restart with --adapter-root DIR")
        await run_in_threadpool(runner.load, body["name"], body["path"], root=adapter_root, reserved=reserved)
        return JSONResponse({"name": body["name"]}, status_code=201)

    @v1.delete("/adapters/{name}")
    async def unload_adapter(name: str):
        await run_in_threadpool(runner.unload, name)
        return {"name": name, "deleted": True}

    @v1.post("/adapters/combine")
    async def combine():
        raise EngineError("classification adapters cannot be combined: their heads have no weighted sum here")

    app.include_router(v1)
    add_classify_routes(app, [Depends(check_key)], runner, base_name, lambda r: _json(r, max_body))
    return app


def classifier_base(spec) -> bool:
    """Whether `lorakit serve --model spec` serves classification only: a checkpoint with a classifier
    head, or an encoder (a family whose classifier head is not a decoder's ``score``)."""
    from transformers import AutoConfig

    from lorakit.classifier import has_classifier_head
    from lorakit.families import family_for
    from lorakit.models import resolve_model

    config = AutoConfig.from_pretrained(str(resolve_model(spec, config_only=True)))
    return has_classifier_head(config) or "score" not in family_for(config).cls_heads


def build_classifier_app(spec, base_name: str, classify: list[tuple[str, Path]], generate: list[str], *,
                         precision: str, quantize: str | None, max_context: int, api_key: str | None,
                         adapter_root: str | None) -> FastAPI:
    """`lorakit serve` on a classifier base: the model with its `classify` adapters loaded, served.
    `generate`: the --adapter values that are not classification adapters (refused here)."""
    from lorakit.infer.classifier_model import load_classifier_base, token_limit

    if generate:
        raise LorakitError(f"--adapter {generate[0]}: {base_name} is a sequence classifier, which cannot generate "
                           "text; give it classification adapters only (lorakit train --task classify)")
    if quantize not in (None, "none"):
        raise LorakitError(f"--quantize {quantize}: a classifier base is served unquantized; drop --quantize")
    model, tok, own_head, labels = load_classifier_base(spec, [p for _, p in classify], precision)
    runner = ClassifierModel(model, tok, max_tokens=token_limit(model, tok, max_context), own_head=own_head,
                             labels=labels)
    for name, path in classify:
        runner.load(name, path, reserved={base_name})
    return create_classifier_app(runner, base_name, api_key=api_key, adapter_root=adapter_root)
