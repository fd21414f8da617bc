"""Reading prepared shards for training and validation.

TokenLoader draws training batches from one split. Windows (data.windows) are visited in a fresh
random order every epoch, a permutation fixed by (seed, epoch), or in order when shuffle=False.
Batches are taken from one global sequence of windows: the step that starts at global row R gives
rank r of N (each with batch size b) the rows [R + r·b, R + (r+1)·b). So ranks read disjoint
windows, and N ranks with batch b read exactly the rows that one process with batch N·b reads,
row for row. The loader's state is that one number R, so `state_dict()` is the same on every rank,
and a run may resume with another world size as long as N·b stays the same.

`validation_batches` gives the same fixed batches on every call: windows spread evenly over the whole
validation split (not its first ones, which would all come from the first few documents).
`ensure_prepared` and `read_meta` are re-exported here, so that training imports one module.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.meta import read_meta
from data.prepare import ensure_prepared
from data.windows import SplitTokens, Windows

__all__ = ["TokenLoader", "ValidationBatches", "ensure_prepared", "read_meta", "validation_batches"]

STATE_FORMAT = 1


def _check_rank(batch_size: int, rank: int, world_size: int) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("rank", rank, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size = {world_size}, got {rank}")


class TokenLoader:
    """Training batches of `split` from the prepared folder `shard_dir`.

    `next_batch()` returns (x, y): int64 CPU tensors (batch_size, seq_len), y = x shifted by one
    token. With `bos_aligned`, every row is the end-of-text token (as BOS) and then seq_len tokens of
    one document (its next chunk; see data.windows).
    `prefetch` batches are prepared ahead in a background thread (0: none); `pin_memory` (default:
    when CUDA is available) places them in page-locked memory for asynchronous copies to the GPU.
    """

    def __init__(self, shard_dir: str | Path, split: str, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, bos_aligned: bool = False, shuffle: bool = True,
                 prefetch: int = 2, pin_memory: bool | None = None) -> None:
        _check_rank(batch_size, rank, world_size)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
        self.windows = Windows(SplitTokens(shard_dir, split), seq_len, bos_aligned)
        self.split, self.seq_len, self.seed = split, seq_len, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.bos_aligned, self.shuffle, self.prefetch = bos_aligned, shuffle, prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._row = 0  # global row of the next batch
        self._orders: dict[int, np.ndarray] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()

    @property
    def rows_per_step(self) -> int:
        """Windows consumed per step by all ranks together (world_size · batch_size)."""
        return self.world_size * self.batch_size

    @property
    def epoch(self) -> float:
        """Passes over the split made so far (fractional)."""
        return self._row / len(self.windows)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(len(self.windows))
        return self._orders[epoch]

    def _make_batch(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = row + self.rank * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, positions = np.divmod(rows, len(self.windows))
        if self.shuffle:
            indices = np.empty_like(positions)
            for epoch in np.unique(epochs):
                mask = epochs == epoch
                indices[mask] = self._order(int(epoch))[positions[mask]]
        else:
            indices = positions
        x, y = self.windows.batch(indices)
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _produce(self, row: int, stop: threading.Event, out: queue.Queue) -> None:
        while not stop.is_set():
            try:
                item: Any = (row, self._make_batch(row))
            except Exception as err:  # handed to the consumer, which raises it
                item = (None, err)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if item[0] is None:
                return
            row += self.rows_per_step

    def _stop_prefetch(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) of this rank: int64 tensors (batch_size, seq_len)."""
        if self.prefetch == 0:
            batch = self._make_batch(self._row)
        else:
            if self._thread is None:
                self._stop = threading.Event()
                self._queue = queue.Queue(maxsize=self.prefetch)
                self._thread = threading.Thread(target=self._produce, daemon=True,
                                                args=(self._row, self._stop, self._queue))
                self._thread.start()
            row, batch = self._queue.get()
            if row is None:
                self._thread = None
                raise RuntimeError("the data loader's prefetch thread failed") from batch
            assert row == self._row, "prefetched batches out of order"
        self._row += self.rows_per_step
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands (plain Python values): the same on every rank."""
        return {"format": STATE_FORMAT, "split": self.split, "seq_len": self.seq_len, "seed": self.seed,
                "bos_aligned": self.bos_aligned, "shuffle": self.shuffle,
                "windows": len(self.windows), "next_row": self._row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`: the next batches are those the saved loader would have given.

        Raises ValueError when the state comes from another split, window layout, seed or data.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a TokenLoader state (format {STATE_FORMAT}): {state!r}")
        mine = self.state_dict()
        for key in ("split", "seq_len", "seed", "bos_aligned", "shuffle", "windows"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume: the saved loader state has {key}={state.get(key)!r}, "
                                 f"this loader {key}={mine[key]!r}")
        row = state.get("next_row")
        if not isinstance(row, int) or row < 0 or row % self.rows_per_step:
            raise ValueError(f"cannot resume at global row {row!r}: not a multiple of "
                             f"world_size · batch_size = {self.rows_per_step}")
        self._stop_prefetch()
        self._row = row

    def close(self) -> None:
        """Stop the prefetch thread (it is a daemon thread, so this is optional at exit)."""
        self._stop_prefetch()


class ValidationBatches(Sequence):
    """A fixed list of validation batches, read lazily. The count·N·b windows used are spread evenly over
    the split (window k of them is the split's window round(k·(W−1)/(count·N·b−1)) of W); item i is
    (x, y) of this rank for global batch i: those windows' [i·N·b + r·b, i·N·b + (r+1)·b).

    A split of fewer than N·b windows gives one smaller batch: b = W // N rows per rank (all W windows
    on one process), with a warning; `note` says so (None otherwise). Fewer windows than ranks is a
    ValueError."""

    def __init__(self, windows: Windows, batch_size: int, rank: int, world_size: int,
                 max_batches: int | None) -> None:
        self.note: str | None = None
        if len(windows) < batch_size * world_size:
            if len(windows) < world_size:
                raise ValueError(f"the validation split has {len(windows)} window(s) of seq_len + 1 = "
                                 f"{windows.seq_len + 1} tokens, fewer than the {world_size} processes: "
                                 f"hold out more text for validation (data.val_fraction when preparing) or "
                                 f"use a shorter model.seq_len")
            small = len(windows) // world_size
            self.note = (f"the validation split has only {len(windows)} window(s) of seq_len + 1 = "
                         f"{windows.seq_len + 1} tokens, fewer than one batch of {batch_size * world_size}: "
                         f"validating on one batch of {small * world_size}")
            warnings.warn(self.note, stacklevel=3)
            batch_size = small
        self.windows, self.batch_size, self.rank, self.world_size = windows, batch_size, rank, world_size
        available = len(windows) // (batch_size * world_size)
        self.count = available if max_batches is None else min(available, max_batches)
        used = self.count * batch_size * world_size
        self.indices = np.round(np.linspace(0, len(windows) - 1, used)).astype(np.int64)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if not -self.count <= i < self.count:
            raise IndexError(f"validation batch {i} of {self.count}")
        i %= self.count
        first = (i * self.world_size + self.rank) * self.batch_size
        return self.windows.batch(self.indices[first:first + self.batch_size])


def validation_batches(shard_dir: str | Path, batch_size: int, seq_len: int, max_batches: int | None,
                       rank: int = 0, world_size: int = 1, bos_aligned: bool = False,
                       split: str = "val") -> ValidationBatches:
    """The fixed validation set: up to `max_batches` batches (None: all) of (x, y), int64 tensors
    (batch_size, seq_len), the same on every call; ranks get disjoint rows of the same global
    batches. A split too small for one batch gives one batch of every window it has (fewer rows;
    see ValidationBatches)."""
    _check_rank(batch_size, rank, world_size)
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be None or an int >= 1, got {max_batches!r}")
    windows = Windows(SplitTokens(shard_dir, split), seq_len, bos_aligned)
    return ValidationBatches(windows, batch_size, rank, world_size, max_batches)
