"""Per-request sampling: greedy, temperature and nucleus (top-p), each request with its own seed.

Each request owns a `torch.Generator`, so its samples depend only on its seed and its own
logits, not on which other requests share the batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from lorakit.errors import LorakitError

MAX_STOP_STRINGS = 8


@dataclass
class SamplingParams:
    """What to generate for one request; temperature 0 means greedy."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise LorakitError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise LorakitError(f"temperature must be between 0 and 2, got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise LorakitError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if len(self.stop) > MAX_STOP_STRINGS or any(not isinstance(s, str) or not s for s in self.stop):
            raise LorakitError(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        """True when the next token is always the arg-max."""
        return float(self.temperature) == 0.0


class Sampler:
    """Draws the next token of one request from its logits."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
            self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, logits: torch.Tensor) -> int:
        """logits (vocab,) -> token id."""
        if self.generator is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / float(self.params.temperature), dim=-1)
        top_p = float(self.params.top_p)
        if top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            keep = (torch.cumsum(sorted_p, 0) - sorted_p) < top_p
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))
