"""Streaming one split's tokens into shards, so that an interrupted run can resume exactly.

The shard being filled is `<split>_<index>.bin.partial`: its header holds a token count of 0, so it
never passes for a finished shard. When it is full it is sealed (the header gets the real count,
the file is flushed to disk) and waits to be published, i.e. renamed to `<split>_<index>.bin`.
The caller publishes only after it has recorded `state()` durably (data.prepare's progress file):
a `.bin` file is always a finished shard, never rewritten, and a restarted writer given the
recorded state truncates the partial shard to its recorded length and goes on from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from data.files import fsync_dir
from data.shards import HEADER_BYTES, MAX_SHARD_TOKENS, make_header, read_header, version_for_dtype


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` (0-based) of `split`."""
    return f"{split}_{index:06d}.bin"


class ShardWriter:
    """Appends one split's tokens to shards of `shard_tokens` tokens in `directory`.

    `state` is what `state()` returned at the last durable checkpoint, or None for a fresh split.
    """

    def __init__(self, directory: Path, split: str, shard_tokens: int, dtype: np.dtype,
                 state: dict | None = None) -> None:
        if not 0 < shard_tokens <= MAX_SHARD_TOKENS:
            raise ValueError(f"shard_tokens must be in [1, {MAX_SHARD_TOKENS}], got {shard_tokens}")
        self.directory = Path(directory)
        self.split = split
        self.shard_tokens = shard_tokens
        self.dtype = np.dtype(dtype)
        self.version = version_for_dtype(self.dtype)
        state = state or {"sealed": [], "partial_tokens": 0}
        self.sealed: list[int] = list(state["sealed"])
        self._unpublished: list[int] = []
        self._file: BinaryIO | None = None
        self._count = 0
        self._restore(int(state["partial_tokens"]))

    def _path(self, index: int, partial: bool = False) -> Path:
        return self.directory / (shard_name(self.split, index) + (".partial" if partial else ""))

    def _restore(self, partial_tokens: int) -> None:
        for index, count in enumerate(self.sealed):
            final, partial = self._path(index), self._path(index, partial=True)
            if final.exists():
                path = final
            elif partial.exists():
                path = partial
                self._unpublished.append(index)
            else:
                raise FileNotFoundError(f"{final}: a shard recorded as finished is missing; delete "
                                        f"{self.directory} and prepare again")
            if read_header(path)[1] != count:
                raise ValueError(f"{path}: token count differs from the recorded {count}; delete "
                                 f"{self.directory} and prepare again")
        current = len(self.sealed)
        for path in self.directory.glob(f"{self.split}_*.bin*"):
            index = int(path.name[len(self.split) + 1:].split(".")[0])
            if index > current or (index == current and not path.name.endswith(".partial")):
                if path.name.endswith(".partial"):
                    path.unlink()  # written after the last checkpoint: will be written again
                else:
                    raise ValueError(f"{path}: a finished shard that the progress record does not "
                                     f"know; delete {self.directory} and prepare again")
        path = self._path(current, partial=True)
        wanted = HEADER_BYTES + partial_tokens * self.dtype.itemsize
        if path.exists():
            if path.stat().st_size < wanted:
                raise ValueError(f"{path}: shorter than its recorded {partial_tokens} tokens; delete "
                                 f"{self.directory} and prepare again")
            self._file = open(path, "r+b")
            self._file.truncate(wanted)
            self._file.seek(wanted)
            self._count = partial_tokens
        elif partial_tokens == 0:
            self._open_new()
        else:
            raise FileNotFoundError(f"{path}: the shard in progress is missing; delete "
                                    f"{self.directory} and prepare again")

    def _open_new(self) -> None:
        self._file = open(self._path(len(self.sealed), partial=True), "wb")
        self._file.write(make_header(self.version, 0))
        self._count = 0

    def _seal(self) -> None:
        assert self._file is not None
        self._file.truncate(HEADER_BYTES + self._count * self.dtype.itemsize)  # bytes `take_tail` gave back
        self._file.seek(0)
        self._file.write(make_header(self.version, self._count))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._unpublished.append(len(self.sealed))
        self.sealed.append(self._count)
        self._count = 0

    def append(self, tokens: np.ndarray) -> None:
        """Append 1-D `tokens` (of this writer's dtype), sealing shards as they fill up."""
        if tokens.dtype != self.dtype:
            raise TypeError(f"tokens must have dtype {self.dtype}, got {tokens.dtype}")
        while tokens.size:
            if self._file is None:
                self._open_new()
            assert self._file is not None
            take = min(tokens.size, self.shard_tokens - self._count)
            self._file.write(tokens[:take].tobytes())
            self._count += take
            tokens = tokens[take:]
            if self._count == self.shard_tokens:
                self._seal()

    def take_tail(self, n: int) -> np.ndarray | None:
        """Remove the last `n` tokens written and return them, when all of them lie in the shard being
        filled; else None, and nothing changes. The file keeps their bytes until the shard is sealed
        (or a restarted writer truncates it to its recorded length), so a crash before the caller has
        recorded `state()` loses nothing."""
        if self._file is None or not 0 < n <= self._count:
            return None
        self._file.flush()
        end = HEADER_BYTES + self._count * self.dtype.itemsize
        start = end - n * self.dtype.itemsize
        with open(self._path(len(self.sealed), partial=True), "rb") as f:
            f.seek(start)
            tail = np.frombuffer(f.read(end - start), dtype=self.dtype).copy()
        self._count -= n
        self._file.seek(start)
        return tail

    @property
    def tokens(self) -> int:
        """Tokens written so far, sealed and partial."""
        return sum(self.sealed) + self._count

    @property
    def has_unpublished(self) -> bool:
        """Whether sealed shards wait for `publish()`."""
        return bool(self._unpublished)

    def sync(self) -> None:
        """Flush the partial shard to disk, so that `state()` describes what is on disk."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def state(self) -> dict:
        """Plain-JSON description of the written data: sealed shards' counts, partial length."""
        return {"sealed": list(self.sealed), "partial_tokens": self._count}

    def publish(self) -> None:
        """Rename sealed shards to their final names (call after recording `state()`)."""
        for index in self._unpublished:
            os.replace(self._path(index, partial=True), self._path(index))
        if self._unpublished:
            fsync_dir(self.directory)
        self._unpublished.clear()

    def finish(self) -> None:
        """Seal the last, shorter shard, or drop the partial file when it holds no token."""
        if self._file is None:
            return
        if self._count:
            self._seal()
        else:
            self._file.close()
            self._file = None
            self._path(len(self.sealed), partial=True).unlink()

    def shards(self) -> list[dict]:
        """[{"file": name, "tokens": count}] of the sealed shards."""
        return [{"file": shard_name(self.split, i), "tokens": n} for i, n in enumerate(self.sealed)]
