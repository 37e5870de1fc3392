"""A preallocated key/value cache with one slot per running request.

Continuous batching needs rows of different lengths in one forward: each slot keeps its
own length, new keys are written at each row's own position, and the caller passes a 4D
boolean mask (transformers uses a 4D mask as given) so each row attends only to its own
past. Rows that decode together are kept in slots ``0..n-1`` so a step reads a plain view
of the buffers instead of gathering them (a gather would copy the whole cache every step).
"""

from __future__ import annotations

import torch


class SlotCache:
    """K/V buffers ``(slots, kv_heads, max_len, head_dim)`` per layer, used as ``past_key_values``.

    Call `bind` before each forward to say which slot rows the batch holds and where each
    row's new tokens start; the attention layers then call `update`.
    """

    def __init__(self, config, slots: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        shape = (slots, kv_heads, max_len, head_dim)
        layers = config.num_hidden_layers
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots, self.max_len = slots, max_len
        self._first = 0
        self._rows = 0
        self._starts: torch.Tensor | None = None
        self._new = 0
        self._kv_len = 0

    @property
    def dtype(self) -> torch.dtype:
        """The buffers' dtype."""
        return self.keys[0].dtype

    @property
    def bytes(self) -> int:
        """Memory held by the buffers."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def bind(self, first: int, starts: list[int], new_tokens: int) -> torch.Tensor:
        """Prepare a forward over slots ``first..first+len(starts)-1``; returns its 4D bool mask.

        Row i's `new_tokens` tokens go to positions ``starts[i]..``; the mask lets token t of
        row i see positions ``<= starts[i] + t`` of its own slot, nothing else.
        """
        rows = len(starts)
        kv_len = max(starts) + new_tokens
        if first + rows > self.slots or kv_len > self.max_len:
            raise ValueError(f"cache overflow: slots {first}+{rows}/{self.slots}, length {kv_len}/{self.max_len}")
        self._first, self._rows, self._new, self._kv_len = first, rows, new_tokens, kv_len
        start_t = torch.tensor(starts, dtype=torch.long)
        self._starts = start_t
        query_pos = start_t[:, None] + torch.arange(new_tokens)[None, :]  # (rows, new)
        mask = torch.arange(kv_len)[None, None, :] <= query_pos[:, :, None]  # (rows, new, kv_len)
        return mask[:, None, :, :]

    def position_ids(self) -> torch.Tensor:
        """Positions of the bound forward's new tokens, (rows, new)."""
        return self._starts[:, None] + torch.arange(self._new)[None, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the new keys/values of the bound rows; return every row's keys/values so far."""
        lo, hi = self._first, self._first + self._rows
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        if self._new == 1:
            rows = torch.arange(lo, hi)
            k_buf[rows, :, self._starts] = key_states[:, :, 0]
            v_buf[rows, :, self._starts] = value_states[:, :, 0]
        else:
            for i in range(self._rows):
                s = int(self._starts[i])
                k_buf[lo + i, :, s:s + self._new] = key_states[i]
                v_buf[lo + i, :, s:s + self._new] = value_states[i]
        return k_buf[lo:hi, :, : self._kv_len], v_buf[lo:hi, :, : self._kv_len]

    def seed(self, slot: int, states: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Write per-layer (keys, values), each (kv_heads, N, head_dim), into positions 0..N-1 of
        `slot` as they are (a prefix-tuning adapter's prefix: no rotary position); returns N."""
        if len(states) != len(self.keys):
            raise ValueError(f"a prefix for {len(states)} layers, but the cache has {len(self.keys)}")
        n = states[0][0].shape[-2]
        if n >= self.max_len:
            raise ValueError(f"a prefix of {n} positions does not fit a cache of {self.max_len}")
        for k_buf, v_buf, (keys, values) in zip(self.keys, self.values, states):
            k_buf[slot, :, :n] = keys
            v_buf[slot, :, :n] = values
        return n

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions into slot `dst` (to keep running rows contiguous)."""
        if src == dst or length == 0:
            return
        for buf in self.keys + self.values:
            buf[dst, :, :length] = buf[src, :, :length]

    # transformers asks these of any cache object
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_len

    def __len__(self) -> int:
        return len(self.keys)
