"""Token ids to streamed text: incremental detokenization and stop strings.

Byte-level BPE can split one character over several tokens, so text is released only
once it decodes cleanly (no trailing U+FFFD), and decoding uses a short window of recent
tokens so each step costs the same however long the answer is. Text that could be the
start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back the new text each one completes."""

    def __init__(self, tokenizer, prompt_ids: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        # a few prompt tokens as context so the first word's leading space decodes as it will in full text
        self.ids: list[int] = list(prompt_ids[-4:]) if prompt_ids else []
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def feed(self, token_id: int) -> str:
        """Text that `token_id` completes (may be empty while a character is split)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


class StopMatcher:
    """Releases text, cutting it at the first stop string and holding back possible stop prefixes."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def _held(self, text: str) -> int:
        """Length of the longest suffix of `text` that starts some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def push(self, text: str) -> str:
        """Add generated text; return what can be shown now. Sets `stopped` at a stop string."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        keep = self._held(self.pending)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        """Text held back when generation ends without a stop string."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
