"""`lorakit serve` and `lorakit generate`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from lorakit.argtypes import finite_float, int_at_least, one_line_errors

log = logging.getLogger("lorakit.infer")

SHUTDOWN_TIMEOUT_S = 30   # on SIGTERM, running requests get this long to finish before they are cancelled
KEEP_ALIVE_S = 5          # an idle keep-alive connection is closed after this long
HEADER_LIMIT_BYTES = 16 * 1024  # h11's bound on a request line plus headers
CONNECTION_HEADROOM = 64  # connections over max-batch + max-queue (for /health, admin): then uvicorn's 503
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def _context_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-context", type=int_at_least(2), default=2048,
                   help="tokens of prompt + answer per request (KV cache size; capped by the model's)")


def _quantize_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", default="none", metavar="{none,nf4,int8}",
                   help="load the base with its linear layers quantized (nf4: 4-bit NormalFloat, int8: per-row int8), "
                        "layer by layer without ever holding the fp32 model; adapters attach on top and compute "
                        "runs in fp32 (less memory, slower: weights are dequantized on the fly). Default none")


def _precision_arg(p: argparse.ArgumentParser) -> None:
    from lorakit.runtime.precision import INFER_PRECISIONS

    p.add_argument("--precision", default="auto", choices=INFER_PRECISIONS,
                   help="bf16: the base's weights and KV cache in bf16 (adapters stay fp32), for CPUs that run "
                        "bf16 natively (AVX512-BF16, AMX), where it is faster than fp32; on an AVX2-only CPU it "
                        "is far slower (figures in bench/RESULTS_serve.md). Default auto: bf16 where a probe, "
                        "measured once per machine, finds it native, else fp32")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` and `generate` to the top-level parser."""
    from lorakit.infer.limits import BODY_READ_TIMEOUT_S, MAX_BODY_BYTES, MAX_JSON_DEPTH

    limits = (f"Limits: request bodies up to {MAX_BODY_BYTES // 2**20} MiB (larger: 413), sent within "
              f"{BODY_READ_TIMEOUT_S:g} s (else 408); JSON nested at most {MAX_JSON_DEPTH} levels; request "
              f"line and headers up to {HEADER_LIMIT_BYTES // 1024} KiB; prompts refused (400) when they cannot fit "
              "--max-context, max_tokens at most --max-context (the default is capped by it); past --max-batch "
              "running and --max-queue waiting requests new ones get 503, and past that plus "
              f"{CONNECTION_HEADROOM} open connections uvicorn answers 503 itself; idle keep-alive connections "
              f"close after {KEEP_ALIVE_S} s; on SIGTERM or Ctrl-C running requests get --shutdown-timeout "
              "seconds to finish, then are cancelled. A client that disconnects cancels its request.")
    s = one_line_errors(sub.add_parser("serve", help="OpenAI-compatible server: one base model, many hot-swappable "
                                        "adapters", description=limits))
    s.add_argument("--model", default=None, help="HF model directory, .gguf file, alias or Hub id org/name[@revision] (default: smollm2-135m-instruct)")
    s.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH", help="adapter to load at start (repeat)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int_at_least(1, 65535), default=8000)
    s.add_argument("--api-key", default=os.environ.get("LORAKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $LORAKIT_API_KEY)")
    s.add_argument("--adapter-root", default=None, metavar="DIR",
                   help="POST /v1/adapters may load adapters only from under DIR (off when not given)")
    s.add_argument("--max-batch", type=int_at_least(1), default=16, help="requests decoded together")
    s.add_argument("--max-queue", type=int_at_least(1), default=256, help="requests waiting before new ones get 503")
    s.add_argument("--shutdown-timeout", type=int_at_least(0), default=SHUTDOWN_TIMEOUT_S, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, how long running requests may take to finish before they are "
                        f"cancelled (default {SHUTDOWN_TIMEOUT_S})")
    _context_arg(s)
    _quantize_arg(s)
    _precision_arg(s)
    s.set_defaults(func=serve)

    g = one_line_errors(sub.add_parser("generate",
                                        help="stream a model's answer (or several adapters' answers) to one prompt"))
    g.add_argument("--model", default=None, help="HF model directory, .gguf file, alias or Hub id org/name[@revision] (default: smollm2-135m-instruct)")
    g.add_argument("--adapter", action="append", default=[], metavar="[NAME=]PATH",
                   help="adapter directory; give it twice (with names) to compare answers")
    g.add_argument("--base", action="store_true", help="also show the base model's answer")
    mode = g.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompt", help="the prompt (instruct models get their chat template)")
    mode.add_argument("--chat", action="store_true", help="interactive chat on stdin (one adapter at most)")
    g.add_argument("--system", default=None, help="system message for chat-template models")
    g.add_argument("--raw", action="store_true", help="send --prompt as plain text, without the chat template")
    g.add_argument("--max-new-tokens", type=int_at_least(1), default=256)
    g.add_argument("--temperature", type=finite_float, default=0.7, help="0 = greedy, at most 2")
    g.add_argument("--top-p", type=finite_float, default=0.95, help="in (0, 1]")
    g.add_argument("--seed", type=int_at_least(*SEED_RANGE), default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeat)")
    _context_arg(g)
    _quantize_arg(g)
    _precision_arg(g)
    g.set_defaults(func=generate)


def _load(model_spec, adapter_specs, quantize: str | None = None, precision: str = "auto"):
    """Base model (quantized if asked, see `load_base_model`; in bf16 if asked) with the named
    adapters loaded (their factors fp32 either way)."""
    from lorakit.errors import LorakitError
    from lorakit.infer.generate import parse_adapter_specs
    from lorakit.infer.virtual_rows import load_any_adapter
    from lorakit.quant.load import load_base_model, parse_quantize
    from lorakit.runtime.precision import check_precision, hold_base_in

    quantized = parse_quantize(quantize) is not None  # refuse a bad value before parsing anything else
    if quantized and check_precision(precision) == "bf16":
        raise LorakitError(f"--precision bf16 with --quantize {quantize}: a quantized base computes in fp32; "
                           "drop one of the two")
    named = parse_adapter_specs(adapter_specs)
    model, tok = load_base_model(model_spec, quantize)
    if not quantized:  # `auto` keeps a quantized base in fp32
        hold_base_in(model, precision)
    for name, path in named:  # prefix/prompt tuning folders load as the engine's per-row virtual tokens
        load_any_adapter(model, path, name)
    return model, tok, [n for n, _ in named], base_model_name(model_spec)


def base_model_name(spec) -> str:
    """The `model` value that selects the base: the alias, the Hub id, or the directory's (or .gguf file's) name."""
    from lorakit.models import DEFAULT_MODEL

    if spec is None:
        return DEFAULT_MODEL
    from lorakit.hub import parse_hub_id

    if not Path(str(spec)).exists() and parse_hub_id(str(spec)):
        return str(spec)  # a Hub id is its own name, as vLLM serves it
    path = Path(str(spec).rstrip("/"))
    return path.stem if path.suffix == ".gguf" else path.name or str(spec)


def generate(args: argparse.Namespace) -> int:
    """Handler of `lorakit generate`."""
    from lorakit.errors import LorakitError
    from lorakit.infer.engine import Engine
    from lorakit.infer.generate import chat_loop, encode, stream_answers
    from lorakit.infer.sampling import SamplingParams

    from lorakit.infer.openai_api import GREEDY_BELOW

    temperature = 0.0 if 0 < args.temperature < GREEDY_BELOW else args.temperature  # as the server does
    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                            seed=args.seed, stop=args.stop)
    if args.chat and (len(args.adapter) > 1 or args.base):
        raise LorakitError("--chat talks to one model: give at most one --adapter and no --base")
    model, tok, names, _ = _load(args.model, args.adapter, args.quantize, args.precision)
    targets: list[str | None] = ([None] if args.base or not names else []) + names
    engine = Engine(model, tok, max_batch=len(targets), max_context=args.max_context)
    try:
        if args.chat:
            chat_loop(engine, targets[0], params, args.system)
            return 0
        ids = encode(tok, args.prompt, None, args.system, args.raw)
        if len(ids) >= engine.max_context:
            raise LorakitError(f"the prompt has {len(ids)} tokens but the context holds {engine.max_context}; "
                               "shorten it or raise --max-context")
        stream_answers(engine, ids, targets, params, sys.stdout, headers=len(targets) > 1)
        return 0
    finally:
        engine.close()


def _exit_cleanly(_sig: int, _frame) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> int:
    """Handler of `lorakit serve`."""
    import torch
    import uvicorn

    from lorakit.adapters.tasks import SEQ_CLS
    from lorakit.errors import LorakitError
    from lorakit.infer.classifier_runner import SharedBaseClassifiers, adapter_task
    from lorakit.infer.classify_server import build_classifier_app, classifier_base
    from lorakit.infer.engine import Engine
    from lorakit.infer.generate import parse_adapter_specs
    from lorakit.infer.server import create_app

    if args.adapter_root and not Path(args.adapter_root).is_dir():
        raise LorakitError(f"--adapter-root {args.adapter_root}: not a directory")
    for spec in args.adapter:
        if "=" not in spec:
            raise LorakitError(f"--adapter {spec!r}: use NAME=PATH")
    # classification (SEQ_CLS) adapters: on a decoder base beside the generation ones, else the base
    # is a classifier and serves /classify only (lorakit.infer.classifier_runner, classify_server)
    named = parse_adapter_specs(args.adapter)
    classify = [(n, p) for n, p in named if adapter_task(p) == SEQ_CLS]
    generate_specs = [s for s, pair in zip(args.adapter, named) if pair not in classify]
    base_name, engine = base_model_name(args.model), None
    if classifier_base(args.model):
        app = build_classifier_app(args.model, base_name, classify, generate_specs, precision=args.precision,
                                   quantize=args.quantize, max_context=args.max_context, api_key=args.api_key,
                                   adapter_root=args.adapter_root)
        kind, playground = " (a classifier: /classify only)", ""
    else:
        model, tok, _, base_name = _load(args.model, generate_specs, args.quantize, args.precision)
        engine = Engine(model, tok, max_batch=args.max_batch, max_context=args.max_context, max_queue=args.max_queue)
        try:
            classifiers = SharedBaseClassifiers(engine)
            for name, path in classify:
                classifiers.load(name, path, reserved={base_name})
        except BaseException:
            engine.close()
            raise
        app = create_app(engine, base_name, api_key=args.api_key, adapter_root=args.adapter_root,
                         classifiers=classifiers)
        kind = "" if args.quantize in (None, "none") else f" ({args.quantize} base)"
        kind += " in bf16" if next(model.parameters()).dtype == torch.bfloat16 else ""
        playground = " (playground at /)"
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not args.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this port can use the model", args.host)
    log.info("serving %s%s with adapters [%s] on http://%s:%d%s", base_name, kind,
             ", ".join(n for n, _ in named), args.host, args.port, playground)
    # uvicorn drains, restores the handlers it found and re-raises the signal it caught; with the
    # default handlers the process would die of it before `engine.close()`. These end it with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    try:
        uvicorn.Server(uvicorn_config(app, args.host, args.port, max_batch=args.max_batch, max_queue=args.max_queue,
                                      shutdown_timeout=args.shutdown_timeout)).run()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        if engine is not None:
            engine.close()  # requests still running after the shutdown timeout end with an error event
    return 0


def uvicorn_config(app, host: str, port: int, *, max_batch: int, max_queue: int,
                   shutdown_timeout: int = SHUTDOWN_TIMEOUT_S):
    """uvicorn's settings for `lorakit serve`: the connection limits stated in its --help.

    uvicorn has no timeout for reading a request's headers; `limit_concurrency` bounds how many
    connections a slow client can hold, and the body has its own read timeout (`limits.read_body`).
    """
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", http="h11",
                          h11_max_incomplete_event_size=HEADER_LIMIT_BYTES, timeout_keep_alive=KEEP_ALIVE_S,
                          limit_concurrency=max_batch + max_queue + CONNECTION_HEADROOM,
                          timeout_graceful_shutdown=shutdown_timeout)
