"""The data config (one file of conf/data/), checked and typed.

Keys (flat mapping; see conf/data/*.yaml):
    name          str    short name used in run names
    source        str    builtin | local | hub
    tokenizer     str    bytes | gpt2 | a tiktoken encoding name
    dir           str    folder of the shards; relative paths are resolved against the project root
    bos_aligned   bool   training windows start at a document start (read by the loader)
    shard_tokens  int    tokens per shard (the last shard of a split is shorter)
    val_fraction  float  share of documents held out for validation, spread evenly over the stream (a
                         source too small for any at that rate gives its last one; data.prepare)
    dtype         str    auto | uint16 | uint32 (token storage; auto picks the smallest that fits)
    workers       int    tokeniser processes; 0 = one per CPU core
    chunk_docs    int    documents per tokenisation task
    expected_tokens int|None  total tokens, only for the progress bar's percentage and ETA
    paths         list[str]   local: globs of .txt (one document per file), .jsonl, .parquet
    text_field    str    local .jsonl/.parquet and hub: the field holding a document's text
    hub_path, hub_config, hub_split, hub_data_files: hub: the `datasets.load_dataset` arguments
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.paths import resolve_path

SOURCES = ("builtin", "local", "hub")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str
    source: str
    tokenizer: str
    dir: str
    bos_aligned: bool = False
    shard_tokens: int = 100_000_000
    val_fraction: float = 0.005
    dtype: str = "auto"
    workers: int = 0
    chunk_docs: int = 256
    expected_tokens: int | None = None
    paths: tuple[str, ...] = ()
    text_field: str = "text"
    hub_path: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    hub_data_files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("name", "source", "tokenizer", "dir", "dtype", "text_field", "hub_split"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise TypeError(f"data.{key} must be a non-empty string, got {getattr(self, key)!r}")
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if not isinstance(self.bos_aligned, bool):
            raise TypeError(f"data.bos_aligned must be a bool, got {self.bos_aligned!r}")
        for key, low in (("shard_tokens", 1), ("workers", 0), ("chunk_docs", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"data.{key} must be an int >= {low}, got {value!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.source == "local" and not self.paths:
            raise ValueError("data.paths must list at least one glob for source=local")
        if self.source == "hub" and not self.hub_path:
            raise ValueError("data.hub_path must name a dataset for source=hub")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> DataConfig:
        """Build from a mapping (an omegaconf DictConfig or a dict); unknown keys are a ValueError."""
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise TypeError(f"the data config must be a mapping, got {type(cfg).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown data config keys {unknown}; known keys: {sorted(known)}")
        values = dict(cfg)
        for key in ("paths", "hub_data_files"):
            if isinstance(values.get(key), str):
                values[key] = (values[key],)
            elif values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def shard_dir(self) -> Path:
        """The shard folder, absolute."""
        return resolve_path(self.dir)

    def settings(self) -> dict[str, Any]:
        """The keys that decide the shards' contents (a prepared folder records them)."""
        keys = ["source", "tokenizer", "shard_tokens", "val_fraction", "dtype"]
        keys += {"builtin": [], "local": ["paths", "text_field"],
                 "hub": ["hub_path", "hub_config", "hub_split", "hub_data_files", "text_field"]}[self.source]
        return {key: list(v) if isinstance(v := getattr(self, key), tuple) else v for key in keys}

    def source_settings(self) -> dict[str, Any]:
        """The settings that say which text a prepared folder holds and how it was tokenised: those a
        reader of the folder must agree with. How the text was split (val_fraction) and stored
        (shard_tokens, dtype) is the folder's own business: readers take it from the folder."""
        return {key: value for key, value in self.settings().items()
                if key not in ("shard_tokens", "val_fraction", "dtype")}
