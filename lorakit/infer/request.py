"""One generation request inside the engine, and the events it streams back."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lorakit.errors import LorakitError
from lorakit.infer.detok import IncrementalDetokenizer, StopMatcher
from lorakit.infer.sampling import Sampler, SamplingParams


class EngineError(LorakitError):
    """A request the engine refuses; `status` is the HTTP status the server answers with."""

    status = 400


class UnknownAdapterError(EngineError):
    status = 404


class PromptTooLongError(EngineError):
    status = 400


class QueueFullError(EngineError):
    status = 503


@dataclass
class Event:
    """What a request streams: ``token`` (new text), then one ``done`` (or ``error``)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


_ids = itertools.count(1)


@dataclass
class Request:
    """A prompt, the adapter it runs (None: base model), how to sample, and where events go."""

    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    emit: Callable[[Event], None]
    tokenizer: object = None
    id: int = field(default_factory=lambda: next(_ids))
    created: float = field(default_factory=time.time)
    # engine state
    slot: int = -1
    cached: int = 0          # tokens of this request now in the KV cache
    next_token: int | None = None  # sampled but not yet fed to the model
    generated: int = 0
    output_ids: list[int] = field(default_factory=list)  # every sampled id, an ending EOS included
    cancelled: bool = False
    finished: bool = False
    # set when the request gets its slot (`lorakit.infer.virtual_rows.start_row`)
    lora: str | None = None  # the LoRA adapter its row runs (None for the base and for a prefix/prompt adapter)
    virtual: int = 0         # cache positions a prefix/prompt adapter's virtual tokens take before the prompt
    virtual_embeds: torch.Tensor | None = None  # prompt tuning: (N, hidden), prefilled before the prompt

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.params)
        self.detok = IncrementalDetokenizer(self.tokenizer, self.prompt_ids)
        self.stops = StopMatcher(self.params.stop)

    def accept(self, token_id: int, eos_ids: set[int], max_context: int) -> str | None:
        """Record a sampled token and emit its text; return a finish reason when the request ends."""
        self.generated += 1
        self.output_ids.append(token_id)
        if token_id in eos_ids:
            return "stop"
        text = self.stops.push(self.detok.feed(token_id))
        if text:
            self.emit(Event("token", text=text))
        if self.stops.stopped:
            return "stop"
        self.next_token = token_id
        if self.generated >= self.params.max_tokens or self.cached + 1 >= max_context:
            return "length"
        return None

    def finish(self, reason: str) -> None:
        """Flush held-back text and send the final event (once)."""
        if self.finished:
            return
        self.finished = True
        tail = self.stops.flush() if reason != "cancelled" else ""
        if tail:
            self.emit(Event("token", text=tail))
        self.emit(Event("done", finish_reason=reason, prompt_tokens=len(self.prompt_ids),
                        completion_tokens=self.generated))

    def fail(self, message: str) -> None:
        """End the request with an error event (an engine fault, not the user's input)."""
        if not self.finished:
            self.finished = True
            self.emit(Event("error", error=message))
