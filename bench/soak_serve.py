"""Load and fault soak of `lorakit serve`: concurrent greedy clients mixed with misbehaving ones.

    .venv/bin/python bench/soak_serve.py                                 # tiny random llama, 180 s, 64 clients
    .venv/bin/python bench/soak_serve.py --duration 30 --clients 16      # a quick look
    .venv/bin/python bench/soak_serve.py --model smollm2-135m-instruct   # the real default model

The server runs as a user runs it (`python -m lorakit serve` on 127.0.0.1, a free port) with two
adapters loaded at start and `--adapter-root`, so a third one is hot loaded and unloaded under
traffic through POST/DELETE /v1/adapters. Before the soak every (endpoint, model, prompt) is asked
alone once: its answer is the reference. During the soak each client loops for --duration seconds,
mostly streaming, greedy (temperature 0), on the base or an adapter; a --fault-rate share of its
requests misbehave (disconnect mid-stream, send a non-streamed request and close the socket,
malformed JSON), one client sends an oversized body every --oversize-every seconds, and
--slow-clients of them send every request byte by byte. Every completed answer must equal its
reference. The server's RSS is sampled every second. Two probes before the soak show whether an
abandoned request keeps generating; at the end SIGTERM is sent with requests in flight and the time
to exit is measured. Exit status 1 on a server crash, a mismatch or any 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["Once upon a time", "The weather today is", "In the provincial town of N.", "Dear diary,",
           "Write a scene at a ball.", "The old man looked at the sea", "Chapter one:", "She said that"]
HOT = "a2"  # the adapter hot loaded and unloaded during the soak


def max_tokens_for(prompt: int) -> int:
    return 12 + 4 * (prompt % 4)


# -- models and adapters --------------------------------------------------------------------------
def build_models(work: Path, model: str | None) -> tuple[str, Path]:
    """The base (a tiny random llama unless `model` is given) and adapters a0, a1, a2 under one root."""
    import torch

    from lorakit.adapters import LoraConfig, add_adapter, adapter_parameters, save_adapter
    from lorakit.models import load_model, load_tokenizer

    tiny = model is None
    if tiny:
        import transformers as tf

        torch.manual_seed(0)  # as tests/infer/conftest.py: larger weights, peaked logits, clear greedy choices
        cfg = tf.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
        base = tf.LlamaForCausalLM(cfg)
        with torch.no_grad():
            for p in base.parameters():
                p.normal_(0, 0.3 if p.ndim > 1 else 0.05).add_(1.0 if p.ndim == 1 else 0.0)
        model = str(work / "tiny-llama")
        base.save_pretrained(model)
        load_tokenizer().save_pretrained(model)
    net, _ = load_model(model, with_tokenizer=False)
    root = work / "adapters"
    for i, name in enumerate(("a0", "a1", HOT)):
        add_adapter(net, LoraConfig(r=4 + 4 * (i % 2), alpha=8 + 8 * (i % 2), target_modules="all-linear"), name)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for p in adapter_parameters(net, name):
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if tiny else 0.02))  # a real model: a nudge
        save_adapter(net, root / name, name=name)
    return model, root


# -- a minimal HTTP/1.1 client on raw sockets (byte-level control for the faults) -----------------
def request_bytes(port: int, method: str, path: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


async def send(port: int, data: bytes, byte_delay: float = 0.0):
    """Connect and send `data` (`byte_delay`: a slow client, one byte at a time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if byte_delay:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(byte_delay)
    else:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def read_head(reader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    return int(lines[0].split()[1]), headers


async def body_chunks(reader, headers: dict[str, str]):
    """The response body as it arrives (chunked, Content-Length or until EOF)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        yield await reader.read()


async def call(port: int, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, bytes]:
    """One plain request; (status, body)."""
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # read while sending: a server may answer (413) and close before a large body is all in
    head = asyncio.ensure_future(read_head(reader))
    try:
        writer.write(request_bytes(port, method, path, data))
        await writer.drain()
    except ConnectionError:
        pass
    try:
        status, headers = await head
        return status, b"".join([c async for c in body_chunks(reader, headers)])
    finally:
        writer.close()


def blocking_status(port: int, data: bytes, timeout: float) -> str:
    """Send `data` on a blocking socket and read the status line, as urllib3 does: a send that
    fails because the server answered early and closed (a 413) still reads that answer, which an
    asyncio transport drops with the connection. The status, or the error's name."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            head = sock.recv(4096)
        except OSError as exc:
            return type(exc).__name__
    return head.split()[1].decode() if head.startswith(b"HTTP/") else "no answer"


@dataclass
class Answer:
    status: int
    text: str = ""
    tokens: int | None = None
    ttft: float | None = None
    total: float = 0.0
    error: str | None = None


def payload(endpoint: str, model: str, prompt: int, stream: bool, max_tokens: int | None = None) -> dict:
    body = {"model": model, "temperature": 0, "max_tokens": max_tokens or max_tokens_for(prompt), "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if endpoint == "chat":
        return {**body, "messages": [{"role": "user", "content": PROMPTS[prompt]}]}
    return {**body, "prompt": PROMPTS[prompt]}


async def complete(port: int, body: dict, byte_delay: float = 0.0, cut_after: int | None = None) -> Answer:
    """A completion, streamed or not; `cut_after`: close the socket after that many streamed chunks."""
    chat = "messages" in body
    path = "/v1/chat/completions" if chat else "/v1/completions"
    started = time.perf_counter()
    reader, writer = await send(port, request_bytes(port, "POST", path, json.dumps(body).encode()), byte_delay)
    try:
        status, headers = await read_head(reader)
        ans = Answer(status)
        if status != 200 or not body.get("stream"):
            raw = b"".join([c async for c in body_chunks(reader, headers)])
            ans.total = time.perf_counter() - started
            reply = json.loads(raw) if raw.strip() else {}
            if status == 200:
                choice = reply["choices"][0]
                ans.text = choice["message"]["content"] if chat else choice["text"]
                ans.tokens = reply["usage"]["completion_tokens"]
            else:
                ans.error = str(reply.get("error", {}).get("message", raw[:200]))
            return ans
        buf, parts, seen = b"", [], 0
        async for chunk in body_chunks(reader, headers):
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = event.decode().removeprefix("data: ")
                if data == "[DONE]":
                    ans.text, ans.total = "".join(parts), time.perf_counter() - started
                    return ans
                msg = json.loads(data)
                if "error" in msg:
                    ans.error = msg["error"].get("message")
                    ans.status = int(msg["error"].get("code") or 500)
                    continue
                if msg.get("usage"):
                    ans.tokens = msg["usage"]["completion_tokens"]
                for choice in msg.get("choices", []):
                    piece = choice["delta"].get("content", "") if chat else choice.get("text", "")
                    if piece and ans.ttft is None:
                        ans.ttft = time.perf_counter() - started
                    parts.append(piece or "")
                seen += 1
                if cut_after is not None and seen >= cut_after:
                    ans.error = "cut"
                    return ans
        ans.error = "stream ended without [DONE]"
        return ans
    finally:
        writer.close()


# -- the soak ---------------------------------------------------------------------------------------
@dataclass
class Stats:
    completed: int = 0
    mismatches: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    slow_completed: int = 0
    timeouts: int = 0
    errors: Counter = field(default_factory=Counter)
    fault_answers: Counter = field(default_factory=Counter)  # (fault, HTTP status) of the faults answered
    crashed: str | None = None


class Soak:
    """Shared state of one soak: the server, the references, the counters."""

    def __init__(self, args, port: int, proc: subprocess.Popen, base: str) -> None:
        self.args, self.port, self.proc, self.base = args, port, proc, base
        self.models = [base, "a0", "a1", HOT]
        self.solo: dict[tuple, tuple[str, int]] = {}
        self.stats = Stats()
        self.rss: list[float] = []
        self.sampling = True  # off before the SIGTERM: the end figure is the running server's
        self.end = 0.0

    def check(self, key: tuple, ans: Answer, slow: bool = False) -> None:
        """Count an answer; a 200 must equal the solo reference for its key."""
        st = self.stats
        st.statuses[ans.status] += 1
        if ans.status != 200 or ans.error:
            st.errors[f"{ans.status}: {(ans.error or '')[:70]}"] += 1
            return
        st.completed += 1
        st.slow_completed += slow
        st.latency.append(ans.total)
        if ans.ttft is not None:
            st.ttft.append(ans.ttft)
        if (ans.text, ans.tokens) != self.solo[key]:
            st.mismatches.append(f"{key}: got {ans.text!r} ({ans.tokens} tokens), solo {self.solo[key]!r}")

    async def record_solo(self) -> None:
        for endpoint in ("completions", "chat"):
            for model in self.models:
                for prompt in range(len(PROMPTS)):
                    ans = await complete(self.port, payload(endpoint, model, prompt, False))
                    assert ans.status == 200, (model, ans.error)
                    self.solo[(endpoint, model, prompt, max_tokens_for(prompt))] = (ans.text, ans.tokens)
        for prompt in range(4):  # longer answers for the SIGTERM drain
            ans = await complete(self.port, payload("completions", self.base, prompt, False, 64))
            self.solo[("completions", self.base, prompt, 64)] = (ans.text, ans.tokens)

    async def guarded(self, coro) -> Answer | None:
        try:
            return await asyncio.wait_for(coro, self.args.request_timeout)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.stats.errors[f"connection: {type(exc).__name__}"] += 1
        return None

    async def client(self, i: int) -> None:
        rng = random.Random(self.args.seed * 1000 + i)
        slow = i < self.args.slow_clients
        while time.monotonic() < self.end and not self.stats.crashed:
            endpoint = "chat" if rng.random() < 0.3 else "completions"
            model, prompt = rng.choice(self.models), rng.randrange(len(PROMPTS))
            key = (endpoint, model, prompt, max_tokens_for(prompt))
            roll = rng.random()
            fault = roll < self.args.fault_rate and not slow
            kind = rng.choice(("disconnect", "abandon", "malformed")) if fault else None
            if kind == "malformed":
                self.stats.faults["malformed JSON"] += 1
                path = rng.choice(("/v1/completions", "/v1/chat/completions", "/v1/adapters"))
                bad = rng.choice((b'{"model": "x", "prompt": ', b"\xff\xfe not json", b"[" * 5000, b""))
                got = await self.guarded(call(self.port, "POST", path, raw=bad))
                if got is not None:
                    self.stats.statuses[got[0]] += 1
                    self.stats.fault_answers[("malformed JSON", got[0])] += 1
                continue
            if kind == "abandon":  # the whole request sent, then the socket closed unread
                self.stats.faults["abandoned non-streamed"] += 1
                body = json.dumps(payload(endpoint, model, prompt, False)).encode()
                try:
                    _, writer = await send(self.port, request_bytes(self.port, "POST", "/v1/completions"
                                           if endpoint == "completions" else "/v1/chat/completions", body))
                    await asyncio.sleep(rng.uniform(0, 0.05))
                    writer.close()
                except OSError as exc:
                    self.stats.errors[f"connection: {type(exc).__name__}"] += 1
                continue
            stream = kind == "disconnect" or rng.random() < 0.75
            if kind == "disconnect":
                self.stats.faults["disconnect mid-stream"] += 1
            if slow:
                self.stats.faults["slow client (byte by byte)"] += 1
            body = payload(endpoint, model, prompt, stream)
            delay = self.args.slow_seconds / 400 if slow else 0.0  # a request is a few hundred bytes
            ans = await self.guarded(complete(self.port, body, delay, rng.randint(1, 4) if kind else None))
            if ans is None:
                continue
            if model == HOT and ans.status == 404:  # the hot adapter is unloaded right now: a right answer
                self.stats.statuses[404] += 1
                continue
            if kind == "disconnect" and ans.error == "cut":
                continue
            self.check(key, ans, slow)

    async def hotswap(self) -> None:
        """Load and unload the third adapter under traffic."""
        rng = random.Random(self.args.seed + 7)
        loaded = False
        while time.monotonic() < self.end and not self.stats.crashed:
            await asyncio.sleep(rng.uniform(0.5, 2 * self.args.hotswap_every))
            if loaded:
                got = await self.guarded(call(self.port, "DELETE", f"/v1/adapters/{HOT}"))
                self.stats.faults["hot unload"] += 1
            else:
                got = await self.guarded(call(self.port, "POST", "/v1/adapters", {"name": HOT, "path": HOT}))
                self.stats.faults["hot load"] += 1
            if got is not None:
                self.stats.statuses[got[0]] += 1
                self.stats.fault_answers[("hot unload" if loaded else "hot load", got[0])] += 1
                if got[0] >= 400:
                    self.stats.errors[f"hotswap {got[0]}: {got[1][:70]!r}"] += 1
                loaded = (not loaded) if got[0] < 300 else loaded

    async def oversize(self) -> None:
        """An oversized body (valid JSON, a huge prompt) every --oversize-every seconds, sent in turn
        all at once (as most clients do) and headers first (the answer read before the body goes)."""
        filler = "lorem ipsum " * (self.args.oversize_mb * 2**20 // 12)
        data = request_bytes(self.port, "POST", "/v1/completions",
                             json.dumps({"model": self.base, "prompt": filler, "max_tokens": 4}).encode())
        n = 0
        while time.monotonic() + self.args.oversize_every < self.end and not self.stats.crashed:
            await asyncio.sleep(self.args.oversize_every)
            self.stats.faults[f"oversized body ({self.args.oversize_mb} MiB)"] += 1
            how, n = ("headers first" if n % 2 else "whole body"), n + 1
            part = data[:data.index(b"\r\n\r\n") + 4] if how == "headers first" else data
            outcome = await asyncio.to_thread(blocking_status, self.port, part, self.args.request_timeout)
            if outcome.isdigit():
                self.stats.statuses[int(outcome)] += 1
            self.stats.fault_answers[(f"oversized, {how}", outcome)] += 1

    async def sample_rss(self) -> None:
        import psutil

        proc = psutil.Process(self.proc.pid)
        while self.sampling and not self.stats.crashed:
            if self.proc.poll() is not None:
                self.stats.crashed = f"server exited with {self.proc.returncode}"
                return
            self.rss.append(proc.memory_info().rss / 2**20)
            await asyncio.sleep(1.0)

    async def idle_after(self, timeout: float = 120.0) -> float | None:
        """Seconds until /health shows nothing running, prefilling or waiting (None: not within timeout)."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            status, raw = await call(self.port, "GET", "/health")
            load = json.loads(raw)
            if status == 200 and not (load.get("running") or load.get("prefilling") or load.get("waiting")):
                return time.perf_counter() - started
            await asyncio.sleep(0.05)
        return None

    async def abandon_probe(self, stream: bool) -> tuple[float | None, float]:
        """Abandon one long request (streamed: after its first chunk); seconds until the server is idle,
        and how long the same request takes to finish when its client stays."""
        body = payload("completions", self.base, 0, stream, self.args.probe_tokens)
        full = (await complete(self.port, body)).total
        if stream:
            await complete(self.port, body, cut_after=1)
        else:
            _, writer = await send(self.port, request_bytes(self.port, "POST", "/v1/completions",
                                                           json.dumps(body).encode()))
            await asyncio.sleep(0.2)  # let it reach the engine
            writer.close()
        return await self.idle_after(), full


def pct(values: list[float], q: float) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"


async def drain_on_sigterm(soak: Soak, n: int) -> tuple[float | None, Counter]:
    """SIGTERM with `n` streamed requests in flight; (seconds to exit, how the requests ended)."""
    keys = [("completions", soak.base, i % 4, 64) for i in range(n)]
    tasks = [asyncio.ensure_future(complete(soak.port, payload(*k[:2], k[2], True, 64))) for k in keys]
    await asyncio.sleep(soak.args.drain_after)
    soak.proc.send_signal(signal.SIGTERM)
    started = time.perf_counter()
    while soak.proc.poll() is None and time.perf_counter() - started < 60:
        await asyncio.sleep(0.01)
    exited = time.perf_counter() - started if soak.proc.poll() is not None else None
    outcome: Counter = Counter()
    for key, task in zip(keys, await asyncio.gather(*tasks, return_exceptions=True)):
        if isinstance(task, BaseException):
            outcome[f"connection {type(task).__name__}"] += 1
        elif task.status == 200 and not task.error:
            outcome["completed, equal to solo" if (task.text, task.tokens) == soak.solo[key] else "completed, MISMATCH"] += 1
        else:
            outcome[f"{task.status} {task.error}"[:60]] += 1
    return exited, outcome


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args, model: str, root: Path, log_path: Path) -> int:
    port = free_port()
    argv = [sys.executable, "-m", "lorakit", "serve", "--model", model, "--adapter", f"a0={root / 'a0'}",
            "--adapter", f"a1={root / 'a1'}", "--adapter-root", str(root), "--port", str(port),
            "--max-context", str(args.max_context)]
    print("server:", " ".join(argv), flush=True)
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log)
    from lorakit.infer.cli import base_model_name

    soak = Soak(args, port, proc, base_model_name(model))
    try:
        started = time.monotonic()
        while True:
            try:
                if (await call(port, "GET", "/health"))[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() - started > 300:
                print("server did not start:", log_path.read_text()[-1500:])
                return 1
            await asyncio.sleep(0.2)
        print(f"server up in {time.monotonic() - started:.1f} s", flush=True)
        assert (await call(port, "POST", "/v1/adapters", {"name": HOT, "path": HOT}))[0] == 201
        await soak.record_solo()
        assert (await call(port, "DELETE", f"/v1/adapters/{HOT}"))[0] == 200
        await soak.idle_after()
        print(f"recorded {len(soak.solo)} solo answers", flush=True)
        for stream in (False, True):
            idle, full = await soak.abandon_probe(stream)
            what = "stream disconnected after its first chunk" if stream else "non-streamed request abandoned"
            print(f"probe: {what} ({args.probe_tokens} tokens, {full:.2f} s when the client stays): server idle "
                  f"{'after %.2f s' % idle if idle is not None else 'NOT within the timeout'}", flush=True)

        soak.end = time.monotonic() + args.duration
        rss_task = asyncio.ensure_future(soak.sample_rss())
        t0 = time.monotonic()
        await asyncio.gather(*(soak.client(i) for i in range(args.clients)), soak.hotswap(), soak.oversize())
        wall = time.monotonic() - t0
        idle = None if soak.stats.crashed else await soak.idle_after()
        soak.sampling = False
        await rss_task
        exited, outcome = (None, Counter()) if soak.stats.crashed else await drain_on_sigterm(soak, args.drain_requests)
        soak.stats.crashed = soak.stats.crashed or "stopped"
        report(soak, wall, idle, exited, outcome, log_path)
        st = soak.stats
        fives = sum(n for s, n in st.statuses.items() if s >= 500)
        crashed = st.crashed != "stopped"
        return 1 if crashed or st.mismatches or fives or "MISMATCH" in " ".join(outcome) else 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


def report(soak: Soak, wall: float, idle, exited, outcome: Counter, log_path: Path) -> None:
    st = soak.stats
    fives = sum(n for s, n in st.statuses.items() if s >= 500)
    print(f"soak: {wall:.0f} s, {soak.args.clients} clients ({soak.args.slow_clients} slow)")
    print(f"requests completed: {st.completed} ({st.completed / wall:.1f}/s; slow clients' {st.slow_completed})")
    print("faults injected:", ", ".join(f"{k} {v}" for k, v in sorted(st.faults.items())) or "none")
    print("fault answers:", ", ".join(f"{k} -> {s} x{v}" for (k, s), v in sorted(st.fault_answers.items())))
    print(f"server crashes: {0 if st.crashed == 'stopped' else 1} ({st.crashed})")
    print(f"mismatches: {len(st.mismatches)}" + "".join(f"\n  {m[:300]}" for m in st.mismatches[:5]))
    print(f"5xx: {fives}; statuses: {dict(sorted(st.statuses.items()))}; client timeouts: {st.timeouts}")
    if st.errors:
        print("refused or failed answers:", "; ".join(f"{k} x{v}" for k, v in st.errors.most_common(8)))
    print(f"latency to full answer: p50 {pct(st.latency, 0.5)}, p99 {pct(st.latency, 0.99)}; "
          f"time to first token (streams): p50 {pct(st.ttft, 0.5)}, p99 {pct(st.ttft, 0.99)}")
    if soak.rss:
        r = soak.rss
        print(f"server RSS: start {r[0]:.0f} MiB, peak {max(r):.0f} MiB, end {r[-1]:.0f} MiB, "
              f"drift {r[-1] - r[0]:+.0f} MiB ({len(r)} samples)")
    print(f"idle after the soak: {'%.2f s' % idle if idle is not None else 'NOT within the timeout'}")
    print(f"SIGTERM with {soak.args.drain_requests} streams in flight: "
          f"{'exited after %.2f s' % exited if exited is not None else 'did NOT exit within 60 s'} "
          f"(exit code {soak.proc.returncode}); in-flight: {dict(outcome)}")
    text = log_path.read_text(errors="replace")
    print(f"server log: {text.count('Traceback')} tracebacks, {len(text.splitlines())} lines ({log_path})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF dir or alias (default: a tiny random llama built here)")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of soak")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--slow-clients", type=int, default=2, help="clients that send each request byte by byte")
    p.add_argument("--slow-seconds", type=float, default=4.0, help="how long a slow client takes to send one")
    p.add_argument("--fault-rate", type=float, default=0.2, help="share of requests that misbehave")
    p.add_argument("--hotswap-every", type=float, default=3.0, help="mean seconds between hot load/unload")
    p.add_argument("--oversize-every", type=float, default=20.0, help="seconds between oversized bodies")
    p.add_argument("--oversize-mb", type=int, default=20)
    p.add_argument("--max-context", type=int, default=256)
    p.add_argument("--probe-tokens", type=int, default=200, help="answer length of the abandon probes")
    p.add_argument("--drain-requests", type=int, default=8, help="streams in flight at SIGTERM")
    p.add_argument("--drain-after", type=float, default=0.5, help="seconds after starting them")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="working folder (default: a temp dir, kept for its log)")
    args = p.parse_args(argv)
    print("command:", " ".join([sys.executable, *sys.argv]), flush=True)
    import torch

    from lorakit.runtime.machine import cpu_facts, gemm_peak_gflops

    facts = cpu_facts()
    print(f"machine: {facts['cpu']}, {facts['logical_cores']} cores, flags {' '.join(facts['flags'])}; GEMM peak "
          f"fp32 {gemm_peak_gflops(seconds=1):.0f}, bf16 {gemm_peak_gflops(torch.bfloat16, seconds=1):.0f} GFLOP/s",
          flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="soak-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    model, root = build_models(work, args.model)
    return asyncio.run(run(args, model, root, work / "server.log"))


if __name__ == "__main__":
    sys.exit(main())
