"""Continuous-batching generation engine: one base model, many adapters, one worker thread.

Requests join between decode steps. A new request's prompt is prefilled in chunks (one
chunk per iteration, so running streams keep moving), then it decodes with everyone else
in one batched forward where each row runs its own adapter (`adapter_rows`); a prefix- or
prompt-tuning adapter's virtual tokens go into its row's cache slot first and the row then
decodes as a base row (`lorakit.infer.virtual_rows`). The model only ever runs on the worker
thread; other threads talk to it through `submit`, `cancel`, `call` (a function run between
steps, waited for) and `post` (the same, not waited for: an adapter load returns as soon as
its attach is queued, since requests queue behind it).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import nullcontext
from typing import Any

import torch

from lorakit.adapters import adapter_rows, adapters, delete_adapter, virtual_adapter
from lorakit.errors import LorakitError
from lorakit.infer.kvcache import SlotCache
from lorakit.infer.request import Event, PromptTooLongError, QueueFullError, Request, UnknownAdapterError
from lorakit.infer.sampling import SamplingParams
from lorakit.infer.virtual_rows import delete_virtual, prompt_inputs, start_row, virtual_rows

log = logging.getLogger("lorakit.infer")


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS and the model's generation config's."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def worker_threads(requested: int | None = None) -> int:
    """Intra-op threads for the engine's worker thread: `requested`, else 1 on a machine with at
    most 2 usable cores, else torch's current setting.

    The worker is not the thread that loaded the model, and on a 2-core machine torch ops run
    with 2 OpenMP threads from such a second thread were slower than with 1, both for a single
    decode-sized GEMM and for the multi-adapter serving benchmark end to end (figures in
    bench/RESULTS_serve.md, "Engine thread runs single-threaded on <= 2 cores"). A likely cause:
    libgomp shortens its spin-waits once it manages more threads than there are cores, so
    parallel regions end in futex sleeps and wake-ups. With more cores, parallel GEMMs should
    be worth that cost (not benchmarked), so torch's setting is kept there.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores <= 2 else torch.get_num_threads()


def check_sizes(**sizes: int) -> None:
    """Refuse engine sizes that cannot serve: each must be an integer >= 1 (`max_context` >= 2,
    room for one prompt token and one answer token)."""
    for key, value in sizes.items():
        low = 2 if key == "max_context" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LorakitError(f"{key} must be an integer of at least {low}, got {value!r}")


def _check_cache_fits(model, slots: int, max_len: int) -> None:
    """Refuse a KV cache (`SlotCache`, allocated up front) larger than the free memory of a CPU model,
    which would otherwise fail deep in torch or be killed by the OOM killer once touched."""
    param = next(model.parameters())
    if param.device.type != "cpu":
        return
    import psutil

    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    need = 2 * cfg.num_hidden_layers * slots * kv_heads * max_len * head_dim * param.element_size()
    free = psutil.virtual_memory().available
    if need > free:
        raise LorakitError(f"the KV cache for {slots} requests of {max_len} tokens needs {need / 2**30:.1f} GiB but "
                           f"{free / 2**30:.1f} GiB is free; lower --max-batch or --max-context")


class Engine:
    """Serves generation requests for `model` and the adapters loaded on it."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16, max_context: int = 2048,
                 max_queue: int = 256, prefill_chunk: int = 256, threads: int | None = None) -> None:
        """`threads`: intra-op threads of the worker thread (None: see `worker_threads`).

        Raises `LorakitError` for a size that cannot serve (zero or negative: requests would wait
        forever) or a KV cache larger than the free memory.
        """
        check_sizes(max_batch=max_batch, max_context=max_context, max_queue=max_queue, prefill_chunk=prefill_chunk)
        if virtual_adapter(model) is not None:
            raise LorakitError(f"the model has a {virtual_adapter(model).peft_type} adapter attached by hooks, which "
                               "would act on every row; remove_virtual_adapter(model) and load the folder with "
                               "lorakit.infer.virtual_rows.load_any_adapter instead")
        self.model, self.tokenizer = model, tokenizer
        self.threads = worker_threads(threads)
        limit = getattr(model.config, "max_position_embeddings", None) or max_context
        self.max_context = min(max_context, limit)
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.eos_ids = eos_token_ids(model, tokenizer)
        _check_cache_fits(model, max_batch, self.max_context)
        self.cache = SlotCache(model.config, max_batch, self.max_context,
                               dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
        self.rows: list[Request] = []          # decoding; rows[i] lives in cache slot i
        self.prefilling: Request | None = None  # at most one, in slot len(rows)
        self.waiting: deque[Request] = deque()
        self.draining: set[str] = set()         # unloaded: no new requests, deleted once idle
        self.public_adapters: tuple[str, ...] = ()
        self.refresh_adapters()                 # the LoRA and the prefix/prompt adapters loaded on the model
        self.pending: set[str] = set()          # adapters whose attach is queued: requests may name them
        self.tokens_generated = 0
        self._inbox: queue.Queue = queue.Queue()
        # makes "check the name, then queue" one step for submit and post, so a request that was
        # accepted for a pending adapter is always queued behind that adapter's attach
        self._names = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lorakit-engine", daemon=True)
        self._thread.start()

    # -- API for other threads ------------------------------------------------------------
    def submit(self, prompt_ids: list[int], adapter: str | None, params: SamplingParams,
               emit: Callable[[Event], None]) -> Request:
        """Queue a request; its events go to `emit` (called on the worker thread)."""
        if not prompt_ids:
            raise PromptTooLongError("the prompt is empty; send at least one token of text")
        if len(prompt_ids) >= self.max_context:
            raise PromptTooLongError(f"the prompt has {len(prompt_ids)} tokens but the context holds {self.max_context}; "
                                     "shorten the prompt")
        self._check_virtual_fits(len(prompt_ids), adapter)
        if self._inbox.qsize() + len(self.waiting) >= self.max_queue:
            raise QueueFullError(f"{self.max_queue} requests are already queued; retry later")
        req = Request(list(prompt_ids), adapter, params, emit, tokenizer=self.tokenizer)
        with self._names:
            if adapter is not None and adapter not in self.adapter_names():
                raise UnknownAdapterError(f"no adapter named {adapter!r}; "
                                          f"loaded: {', '.join(self.adapter_names()) or 'none'}")
            self._inbox.put(("submit", req))
        return req

    def _check_virtual_fits(self, prompt_len: int, adapter: str | None) -> None:
        """Refuse a prompt that does not fit the context after a prefix/prompt adapter's virtual tokens."""
        rows = virtual_rows(self.model).get(adapter) if adapter is not None else None
        if rows is not None and prompt_len + rows.num_virtual_tokens >= self.max_context:
            raise PromptTooLongError(f"the prompt has {prompt_len} tokens and adapter {adapter!r} puts "
                                     f"{rows.num_virtual_tokens} virtual tokens before it, but the context holds "
                                     f"{self.max_context}; shorten the prompt")

    def cancel(self, req: Request) -> None:
        """Stop `req` at the next step and free its slot (e.g. the client went away)."""
        req.cancelled = True
        self._inbox.put(("wake", None))

    def call(self, fn: Callable[[], Any], timeout: float | None = 60.0) -> Any:
        """Run `fn` on the worker thread between two steps and return its result (or raise its error)."""
        return self.post(fn).result(timeout)

    def post(self, fn: Callable[[], Any], *, adds: str | None = None) -> Future:
        """Queue `fn` to run on the worker thread between two steps; returns its Future at once.

        `adds`: the adapter name `fn` installs. From this call on, requests may name it: they
        queue behind `fn`, so they run with the adapter in place (or fail, if `fn` fails).
        Raises ValueError if that name is already loaded or pending.
        """
        fut: Future = Future()
        with self._names:
            if adds is not None:
                if adds in self.public_adapters or adds in self.pending:
                    raise ValueError(f"adapter {adds!r} is already loaded or being loaded")
                self.pending.add(adds)
            self._inbox.put(("call", (fn, fut, adds)))
        return fut

    def stream(self, prompt_ids: list[int], adapter: str | None, params: SamplingParams) -> Iterator[Event]:
        """Submit and yield the request's events from this (non-worker) thread."""
        events: queue.Queue = queue.Queue()
        req = self.submit(prompt_ids, adapter, params, events.put)
        try:
            while True:
                event = events.get()
                yield event
                if event.kind != "token":
                    return
        finally:
            if not req.finished:
                self.cancel(req)

    def close(self) -> None:
        """Stop the worker thread (running requests end with an error event)."""
        self._stop = True
        self._inbox.put(("wake", None))
        self._thread.join(timeout=30)

    def load(self) -> dict[str, int]:
        """Requests running, prefilling and waiting (read without locking: approximate)."""
        return {"running": len(self.rows), "prefilling": int(self.prefilling is not None),
                "waiting": len(self.waiting) + self._inbox.qsize()}

    def refresh_adapters(self) -> None:
        """Recompute the adapters new requests may use (worker thread, after any change)."""
        names = [*adapters(self.model), *virtual_rows(self.model)]
        self.public_adapters = tuple(n for n in names if n not in self.draining)

    def adapter_names(self) -> tuple[str, ...]:
        """Adapters requests may name now: the loaded ones and those whose attach is queued."""
        return self.public_adapters + tuple(sorted(self.pending - set(self.public_adapters)))

    def in_use(self, name: str) -> bool:
        """Whether a running or queued request uses adapter `name` (worker thread)."""
        reqs = [*self.rows, *self.waiting, *([self.prefilling] if self.prefilling else [])]
        return any(r.adapter == name for r in reqs)

    # -- worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        torch.set_num_threads(self.threads)  # this thread's OpenMP team (other threads keep theirs)
        while not self._stop:
            idle = not (self.rows or self.prefilling or self.waiting)
            try:
                self._handle(self._inbox.get(timeout=0.5) if idle else self._inbox.get_nowait())
                while True:
                    self._handle(self._inbox.get_nowait())
            except queue.Empty:
                pass
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    self._admit()
                    self._step()
                self.finish_draining()
            except Exception as exc:  # a fault must not kill the server: fail the batch, keep serving
                log.exception("engine step failed")
                for req in [*self.rows, *([self.prefilling] if self.prefilling else [])]:
                    req.fail(f"generation failed: {exc}")
                self.rows, self.prefilling = [], None
        for req in [*self.rows, *self.waiting, *([self.prefilling] if self.prefilling else [])]:
            req.fail("the server is shutting down")

    def _handle(self, item) -> None:
        kind, payload = item
        if kind == "submit":
            known = payload.adapter in adapters(self.model) or payload.adapter in virtual_rows(self.model)
            if payload.adapter is not None and not known:
                payload.fail(f"adapter {payload.adapter!r} failed to load; see the server log")  # its attach failed
            else:
                self.waiting.append(payload)
        elif kind == "call":
            fn, fut, adds = payload
            try:
                fut.set_result(fn())
            except BaseException as exc:
                if adds is not None:
                    log.error("adapter %s was not loaded: %s", adds, exc)
                fut.set_exception(exc)
            finally:
                with self._names:
                    self.pending.discard(adds)
                    self.refresh_adapters()

    def _drop_cancelled(self) -> None:
        for req in [r for r in self.waiting if r.cancelled]:
            req.finish("cancelled")
        self.waiting = deque(r for r in self.waiting if not r.cancelled)
        if self.prefilling is not None and self.prefilling.cancelled:
            self.prefilling.finish("cancelled")
            self.prefilling = None
        for req in [r for r in self.rows if r.cancelled]:
            req.finish("cancelled")
            self._remove(req)

    def _admit(self) -> None:
        if self.prefilling is None and self.waiting and len(self.rows) < self.max_batch:
            req = self.waiting.popleft()
            try:  # an adapter whose attach was queued when the request came: its length is checked now
                self._check_virtual_fits(len(req.prompt_ids), req.adapter)
            except PromptTooLongError as exc:
                req.fail(str(exc))
                return
            req.slot = len(self.rows)
            start_row(self.cache, req, virtual_rows(self.model).get(req.adapter) if req.adapter else None)
            self.prefilling = req

    def _remove(self, req: Request) -> None:
        """Free `req`'s slot, moving the last row into it so rows stay in slots 0..n-1."""
        i = self.rows.index(req)
        last = self.rows.pop()
        if last is not req:
            self.rows[i] = last
            self.cache.move(last.slot, i, last.cached)
            last.slot = i
        if self.prefilling is not None and self.prefilling.slot != len(self.rows):
            self.cache.move(self.prefilling.slot, len(self.rows), self.prefilling.cached)
            self.prefilling.slot = len(self.rows)

    def _forward(self, ids: torch.Tensor, first: int, starts: list[int], names: list[str | None],
                 lead: torch.Tensor | None = None) -> torch.Tensor:
        """Last-position logits (rows, vocab) of `ids` (rows, T) for slots ``first..``, row i running
        LoRA adapter ``names[i]``; `lead` (N, hidden): prompt-tuning embeddings before the one row's ids."""
        mask = self.cache.bind(first, starts, ids.shape[1] + (0 if lead is None else lead.shape[0]))
        rows = adapter_rows(self.model, names) if adapters(self.model) else nullcontext()
        with rows:
            inputs = {"input_ids": ids} if lead is None else {"inputs_embeds": prompt_inputs(self.model, lead, ids)}
            out = self.model(**inputs, attention_mask=mask, position_ids=self.cache.position_ids(),
                             past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _step(self) -> None:
        req = self.prefilling
        if req is not None:
            done = max(0, req.cached - req.virtual)  # prompt tokens in the cache
            chunk = req.prompt_ids[done: done + self.prefill_chunk]
            lead, req.virtual_embeds = req.virtual_embeds, None  # prompt tuning: in front of the first chunk
            logits = self._forward(torch.tensor([chunk]), req.slot, [req.cached], [req.lora], lead)
            req.cached += len(chunk) + (0 if lead is None else lead.shape[0])
            if req.cached == req.virtual + len(req.prompt_ids):
                self.prefilling = None
                self.rows.append(req)
                self._accept(req, logits[0])
        if not self.rows:
            return
        batch = list(self.rows)
        ids = torch.tensor([[r.next_token] for r in batch])
        logits = self._forward(ids, 0, [r.cached for r in batch], [r.lora for r in batch])
        for r in batch:
            r.cached += 1
        for r, row in zip(batch, logits):
            self._accept(r, row)

    def _accept(self, req: Request, logits: torch.Tensor) -> None:
        try:
            token = req.sampler(logits)
        except Exception as exc:  # one request's sampling fault fails that request, not the whole batch
            log.exception("sampling failed for request %d", req.id)
            req.fail(f"sampling failed: {exc}")
            self._remove(req)
            return
        reason = req.accept(token, self.eos_ids, self.max_context)
        self.tokens_generated += 1
        if reason is not None:
            req.finish(reason)
            self._remove(req)

    def finish_draining(self) -> None:
        """Delete the unloaded adapters that no request uses any more (worker thread)."""
        for name in [n for n in self.draining if not self.in_use(n)]:
            if name in adapters(self.model):
                delete_adapter(self.model, name)
            elif name in virtual_rows(self.model):
                delete_virtual(self.model, name)
            self.draining.discard(name)
            log.info("adapter %s unloaded", name)
            self.refresh_adapters()
