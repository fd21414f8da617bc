"""The static key/value cache of decoding: preallocated once per generation, written in place.

``StaticCache`` holds, for every layer, the keys of each view and the values, each a (batch, kv heads, capacity,
head dim) buffer allocated at the layer's first write (in the projections' dtype and head layout), zero-filled, with
``capacity`` the longest sequence asked for rounded up to whole pages of ``PAGE`` positions, the unit the decoding
kernels read and skip (kernels/decode). Rows have lengths of their own (``lengths``, on the device): a batch of
prompts of different lengths is prefilled right-padded, and every later token of row b is written at, and attends
from, position lengths[b]. Nothing on the decoding path concatenates, allocates or reads a tensor back to the host,
so one decoding step can be captured in a CUDA graph and replayed (model.generate).

Host-side bookkeeping (``longest``, the longest row's length) only guards the capacity: a forward that would write
past the cache's ``length`` is a ValueError before anything runs.
"""
from __future__ import annotations

import torch

from kernels.decode import PAGE


class LayerCache:
    """One layer's keys (``k``, one buffer per view) and values (``v``), (B, Hkv, capacity, d) each, allocated by
    the first ``write``."""

    def __init__(self, owner: "StaticCache"):
        self.owner = owner
        self.k: list[torch.Tensor] = []
        self.v: torch.Tensor | None = None

    def _allocate(self, keys: list[torch.Tensor], values: torch.Tensor) -> None:
        B, cap = self.owner.batch, self.owner.capacity
        if values.shape[0] != B:
            raise ValueError(f"a batch of {values.shape[0]} rows does not fit a cache made for {B}")
        self.k = [torch.zeros(B, k.shape[1], cap, k.shape[3], dtype=k.dtype, device=k.device) for k in keys]
        self.v = torch.zeros(B, values.shape[1], cap, values.shape[3], dtype=values.dtype, device=values.device)

    def write(self, keys: list[torch.Tensor], values: torch.Tensor, positions: torch.Tensor) -> None:
        """Store the keys (one (B, Hkv, T, d) tensor per view) and values (B, Hkv, T, dv) of T tokens per row. One
        token (T = 1) goes to each row's own position ``positions`` ((B, 1) or (1,)), several (a prefill, into an
        empty cache) to positions 0 … T − 1 of every row."""
        if self.v is None:
            self._allocate(keys, values)
        buffers, new = self.k + [self.v], list(keys) + [values]
        T = values.shape[2]
        if T == 1:
            index = positions.reshape(-1).expand(values.shape[0])
            for buf, x in zip(buffers, new):
                buf.scatter_(2, index.view(-1, 1, 1, 1).expand(-1, buf.shape[1], 1, buf.shape[3]), x.to(buf.dtype))
        else:
            for buf, x in zip(buffers, new):
                buf[:, :, :T].copy_(x)


class StaticCache:
    """Keys and values of every layer for ``batch`` rows of up to ``length`` positions each, on ``device``.

    ``lengths`` (B,) int64 on the device: tokens cached per row (the next token of row b sits at position
    lengths[b]). ``positions(T)`` gives the positions of T more tokens per row; ``advance`` moves the lengths on.
    ``max_seq_len`` (the model's) is only named in errors."""

    def __init__(self, n_layers: int, batch: int, length: int, device: torch.device | str,
                 max_seq_len: int | None = None):
        if batch < 1 or length < 1:
            raise ValueError(f"a cache needs batch >= 1 and length >= 1, got batch={batch}, length={length}")
        self.batch, self.length, self.max_seq_len = int(batch), int(length), max_seq_len
        self.capacity = -(-self.length // PAGE) * PAGE
        self.lengths = torch.zeros(self.batch, dtype=torch.long, device=device)
        self.layers = [LayerCache(self) for _ in range(n_layers)]
        self.longest = 0

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    def check(self, tokens: int, batch: int) -> None:
        """ValueError unless ``tokens`` more tokens of ``batch`` rows fit: the batch the cache was made for, every
        row within ``length`` positions, and several tokens at once only into an empty cache (a prefill)."""
        if batch != self.batch:
            raise ValueError(f"a batch of {batch} rows does not fit a cache made for {self.batch}")
        if tokens > 1 and self.longest > 0:
            raise ValueError(f"{tokens} tokens at once after {self.longest} cached ones: a cache takes several tokens "
                             f"only when empty (the prefill), then one token per row at a time")
        if self.longest + tokens > self.length:
            limit = f"; model.max_seq_len={self.max_seq_len}" if self.max_seq_len is not None else ""
            raise ValueError(f"{self.longest} cached + {tokens} new tokens exceed the cache's length of {self.length} "
                             f"positions (made for the longest sequence asked for{limit})")

    def positions(self, tokens: int) -> torch.Tensor:
        """(B, tokens) absolute positions of the next ``tokens`` tokens of every row."""
        return self.lengths[:, None] + torch.arange(tokens, device=self.lengths.device)

    def advance(self, tokens: int, lengths: list[int] | None = None) -> None:
        """Every row grew by ``tokens``; or, after a prefill of right-padded prompts, row b holds ``lengths[b]``."""
        if lengths is None:
            self.lengths += tokens
            self.longest += tokens
        else:
            self.lengths.copy_(torch.tensor(lengths, dtype=torch.long), non_blocking=False)
            self.longest = max(lengths)

    def snapshot(self) -> tuple[torch.Tensor, int]:
        """The lengths (device copy) and the host bookkeeping, for ``restore``."""
        return self.lengths.clone(), self.longest

    def restore(self, state: tuple[torch.Tensor, int]) -> None:
        self.lengths.copy_(state[0])
        self.longest = state[1]
