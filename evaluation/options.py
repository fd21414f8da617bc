"""Typed reads of eval.py's options (conf/eval.yaml): every bad value is a one-line ValueError that names
its key, e.g. ``passkey.lengths must be a list of ints >= 1 or null, got 'abc'``."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` (lists as Python lists); a ValueError naming the key when a group on the
    way is not a group of options (``passkey=3``) or the key is missing."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            group = ".".join(parts[:i])
            raise ValueError(f"{group} must be a group of options ({group}.{part}=...), got {node!r}")
        if part not in node:
            raise ValueError(f"{key} is missing from the eval config")
        if OmegaConf.is_missing(node, part):
            raise ValueError(f"{key} must be given ({key}=...)")
        node = node[part]
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    return f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""


def integer(cfg: DictConfig, key: str, low: int | None = None, high: int | None = None,
            optional: bool = False) -> int | None:
    """An int option (None allowed when ``optional``)."""
    x = value(cfg, key)
    if x is None and optional:
        return None
    if not _is_int(x) or (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{key} must be an int{_range(low, high)}{' or null' if optional else ''}, got {x!r}")
    return x


def number(cfg: DictConfig, key: str, low: float | None = None, high: float | None = None) -> float:
    """A real-number option."""
    x = value(cfg, key)
    if not _is_number(x) or (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{key} must be a number{_range(low, high)}, got {x!r}")
    return float(x)


def text(cfg: DictConfig, key: str, optional: bool = False) -> str | None:
    """A string option (None allowed when ``optional``)."""
    x = value(cfg, key)
    if x is None and optional:
        return None
    if not isinstance(x, str):
        raise ValueError(f"{key} must be a string{' or null' if optional else ''}, got {x!r}")
    return x


def integers(cfg: DictConfig, key: str, low: int | None = None, optional: bool = False) -> list[int] | None:
    """A non-empty list of ints (one int is a list of one; None allowed when ``optional``)."""
    x = value(cfg, key)
    if x is None and optional:
        return None
    items = [x] if _is_int(x) else x
    if not isinstance(items, list) or not items or not all(_is_int(i) and (low is None or i >= low) for i in items):
        raise ValueError(f"{key} must be a list of ints{_range(low, None)}{' or null' if optional else ''}, "
                         f"e.g. {key}=[1,2], got {x!r}")
    return items


def numbers(cfg: DictConfig, key: str, low: float | None = None, high: float | None = None) -> list[float]:
    """A non-empty list of real numbers (one number is a list of one)."""
    x = value(cfg, key)
    items = [x] if _is_number(x) else x
    if not isinstance(items, list) or not items or not all(
            _is_number(i) and (low is None or i >= low) and (high is None or i <= high) for i in items):
        raise ValueError(f"{key} must be a list of numbers{_range(low, high)}, e.g. {key}=[0.0,0.5], got {x!r}")
    return [float(i) for i in items]


def texts(cfg: DictConfig, key: str) -> list[str]:
    """A non-empty list of strings (one string is a list of one)."""
    x = value(cfg, key)
    items = [x] if isinstance(x, str) else x
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"{key} must be a non-empty list of names, got {x!r}")
    return items
