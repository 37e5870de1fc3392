"""`lorakit generate`: stream a model's (and its adapters') answers to the terminal.

Runs on the serving engine (KV cache, per-request sampling), so several adapters given for
one prompt are generated together in one batch; each answer is printed under its name as
it streams.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from lorakit.errors import LorakitError
from lorakit.infer.engine import Engine
from lorakit.infer.prompts import encode_chat, encode_prompt, has_chat_template
from lorakit.infer.request import Event
from lorakit.infer.sampling import SamplingParams


def parse_adapter_specs(specs: Iterable[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` or ``PATH`` (named after its folder) -> [(name, path)]; names must differ."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not name or not path:
            raise LorakitError(f"--adapter {spec!r}: use NAME=PATH or PATH")
        if name in (n for n, _ in out):
            raise LorakitError(f"--adapter name {name!r} is given twice; name them: --adapter A=PATH1 --adapter B=PATH2")
        out.append((name, Path(path)))
    return out


def encode(tokenizer, text: str, history: list[dict[str, str]] | None, system: str | None, raw: bool) -> list[int]:
    """Prompt ids: the chat template for instruct models (unless `raw`), plain text otherwise."""
    if raw or not has_chat_template(tokenizer):
        return encode_prompt(tokenizer, text)
    messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
    return encode_chat(tokenizer, messages + [{"role": "user", "content": text}])


def stream_answers(engine: Engine, ids: list[int], targets: list[str | None], params: SamplingParams,
                   out: TextIO, headers: bool) -> list[str]:
    """Generate one answer per target (adapter name or None for base) and print them as they stream."""
    queues: list[queue.Queue] = []
    requests = []
    for target in targets:
        q: queue.Queue = queue.Queue()
        requests.append(engine.submit(ids, target, params, q.put))
        queues.append(q)
    answers = []
    try:
        for target, q in zip(targets, queues):
            if headers:
                out.write(f"\n=== {target or 'base'} ===\n")
            parts = []
            while (event := q.get()).kind == "token":
                parts.append(event.text)
                out.write(event.text)
                out.flush()
            if event.kind == "error":
                raise LorakitError(event.error or "generation failed")
            out.write(f"\n[{event.completion_tokens} tokens, {_reason(event)}]\n" if headers else "\n")
            answers.append("".join(parts))
    finally:
        for req in requests:
            if not req.finished:
                engine.cancel(req)
    return answers


def _reason(event: Event) -> str:
    return {"stop": "finished", "length": "hit the token limit"}.get(event.finish_reason or "", event.finish_reason)


def chat_loop(engine: Engine, target: str | None, params: SamplingParams, system: str | None,
              stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    """Interactive chat: one line per turn; an empty line, /quit or end of input ends it."""
    stdin, out = stdin or sys.stdin, out or sys.stdout  # looked up per call: tests and pipes swap them
    history: list[dict[str, str]] = []
    interactive = stdin.isatty()
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = stdin.readline()
        if not line or line.strip() in ("", "/quit", "/exit"):
            return
        ids = encode(engine.tokenizer, line.strip(), history, system, raw=False)
        out.write("model> ")
        [answer] = stream_answers(engine, ids, [target], params, out, headers=False)
        history += [{"role": "user", "content": line.strip()}, {"role": "assistant", "content": answer}]
