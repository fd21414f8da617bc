"""The tokens of one split as a single sequence over memory-mapped shards, and the training
windows cut from it.

A window is seq_len + 1 tokens (inputs and the targets shifted by one). Windows either tile the
sequence (window k is tokens [k·seq_len, (k+1)·seq_len]; consecutive windows share one token, so
every token is a target exactly once) or, when `bos_aligned`, are the end-of-text token as a
beginning-of-sequence token followed by seq_len consecutive tokens of one document: a document
(the tokens after an end-of-text token, up to and including the next one, which ends it) is cut
into chunks of seq_len tokens, each of which gets the BOS in front, so every token of every
document is a target in a window that opens a chunk of its own document, and every window starts
with the same token. A document's last chunk, when shorter than seq_len, runs on into the next
document to fill the window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.meta import read_meta
from data.shards import open_shard


class SplitTokens:
    """All tokens of `split` in the prepared folder `shard_dir`, read across shard boundaries."""

    def __init__(self, shard_dir: str | Path, split: str) -> None:
        shard_dir = Path(shard_dir)
        self.meta = read_meta(shard_dir)
        if split not in self.meta["splits"]:
            raise ValueError(f"split must be one of {sorted(self.meta['splits'])}, got {split!r}")
        self.split = split
        self._arrays: list[np.ndarray] = []
        for entry in self.meta["splits"][split]["shards"]:
            path = shard_dir / entry["file"]
            tokens = open_shard(path)
            if tokens.size != entry["tokens"] or tokens.dtype.name != self.meta["dtype"]:
                raise ValueError(f"{path}: {tokens.size} {tokens.dtype.name} tokens, but meta.json records "
                                 f"{entry['tokens']} {self.meta['dtype']} tokens")
            self._arrays.append(tokens)
        self._ends = np.cumsum([a.size for a in self._arrays], dtype=np.int64)
        self.n_tokens = int(self._ends[-1]) if self._arrays else 0

    def read(self, start: int, length: int) -> np.ndarray:
        """A copy of tokens [start, start + length) (1-D, the shards' dtype)."""
        if start < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {self.n_tokens})")
        out = np.empty(length, dtype=self._arrays[0].dtype)
        shard = int(np.searchsorted(self._ends, start, side="right"))
        filled = 0
        while filled < length:
            begin = start + filled - (int(self._ends[shard - 1]) if shard else 0)
            piece = self._arrays[shard][begin:begin + length - filled]
            out[filled:filled + piece.size] = piece
            filled += piece.size
            shard += 1
        return out

    def positions_of(self, token: int) -> np.ndarray:
        """Sorted positions (int64) where `token` occurs; reads the whole split once."""
        found, offset = [], 0
        for tokens in self._arrays:
            found.append(np.flatnonzero(tokens == token) + offset)
            offset += tokens.size
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def document_chunks(eot_positions: np.ndarray, n_tokens: int, seq_len: int) -> np.ndarray:
    """Start positions of the BOS-aligned chunks: each document (from 0 or just after an end-of-text
    token, up to and including the next end-of-text token or the end) cut every seq_len tokens; chunks
    that would read past the last token are dropped. Sorted int64."""
    begins = np.concatenate([[0], eot_positions + 1]).astype(np.int64)
    ends = np.concatenate([eot_positions + 1, [n_tokens]]).astype(np.int64)
    lengths = ends - begins
    chunks = -(-lengths // seq_len)  # ceil; 0 for an empty document
    first = np.repeat(begins, chunks)
    index_in_doc = np.arange(int(chunks.sum()), dtype=np.int64) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    starts = first + index_in_doc * seq_len
    return starts[starts + seq_len <= n_tokens]


class Windows:
    """The training windows of one split: `len()` of them, each seq_len + 1 tokens."""

    def __init__(self, tokens: SplitTokens, seq_len: int, bos_aligned: bool) -> None:
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        self.tokens = tokens
        self.seq_len = seq_len
        self._starts: np.ndarray | None = None
        self._bos: int | None = None
        if bos_aligned:
            self._bos = int(tokens.meta["eot_token"])
            self._starts = document_chunks(tokens.positions_of(self._bos), tokens.n_tokens, seq_len)
            self.count = int(self._starts.size)
        else:
            self.count = max(tokens.n_tokens - 1, 0) // seq_len
        if self.count == 0:
            raise ValueError(f"split {tokens.split!r} has {tokens.n_tokens} tokens: no window of "
                             f"seq_len + 1 = {seq_len + 1} tokens fits; lower seq_len")

    def __len__(self) -> int:
        return self.count

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the windows `indices`: two int64 tensors (len(indices), seq_len)."""
        if self._starts is None:
            rows = np.stack([self.tokens.read(int(s), self.seq_len + 1) for s in indices * self.seq_len])
        else:
            rows = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
            rows[:, 0] = self._bos
            for row, start in zip(rows, self._starts[indices]):
                row[1:] = self.tokens.read(int(start), self.seq_len)
        both = torch.from_numpy(rows.astype(np.int64, copy=False))
        return both[:, :-1].contiguous(), both[:, 1:].contiguous()
