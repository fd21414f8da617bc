"""What every evaluation task receives: the loaded model, the run's and the evaluation's configs, the
device, the autocast context and the output folder."""
from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tiktoken
import torch
from omegaconf import DictConfig

from data.prepare import ensure_prepared
from data.tokenizer import get_tokenizer
from data.windows import SplitTokens, Windows
from model.gpt import GPT


def device_and_autocast(device: str, precision: str) -> tuple[torch.device, Callable[[], AbstractContextManager]]:
    """The torch device for ``device`` (auto | cpu | cuda[:i]) and a factory of the autocast context for
    ``precision`` (auto: bf16 on CUDA, fp32 elsewhere | bf16 | fp32)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device} but torch finds no CUDA device: pass device=cpu (or auto)")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision == "bf16":
        return dev, lambda: torch.autocast(dev.type, dtype=torch.bfloat16)
    return dev, nullcontext


@dataclass
class EvalContext:
    """model: a GPT in eval mode on ``device``; run_cfg: the run's config.yaml; cfg: the eval config;
    autocast: a factory of the precision context; out_dir: where files are written."""

    model: GPT
    run_cfg: DictConfig
    cfg: DictConfig
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    out_dir: Path

    @property
    def train_len(self) -> int:
        """The training sequence length in tokens."""
        return int(self.run_cfg.model.seq_len)

    @property
    def bos_aligned(self) -> bool:
        """Whether the run trained on windows that start with the end-of-text token as BOS."""
        return bool(self.run_cfg.data.get("bos_aligned", False))

    @property
    def bos_prefix(self) -> list[int]:
        """[end-of-text token] for a BOS-aligned run (every input it was trained on starts with it), else []:
        put in front of every prompt, so the model sees its inputs in the form it was trained on."""
        return [self.tokenizer.eot_token] if self.bos_aligned else []

    @functools.cached_property
    def tokenizer(self) -> tiktoken.Encoding:
        """The tokenizer the run's data was prepared with."""
        return get_tokenizer(str(self.run_cfg.data.tokenizer))

    @functools.cached_property
    def shard_dir(self) -> Path:
        """The run's prepared data folder (the built-in corpus is prepared here when missing)."""
        return ensure_prepared(self.run_cfg.data)

    @functools.cached_property
    def val_tokens(self) -> SplitTokens:
        """The validation split of the run's data."""
        return SplitTokens(self.shard_dir, "val")

    def validation_windows(self, seq_len: int) -> int:
        """How many validation windows of ``seq_len`` tokens (in the training layout) the split holds."""
        try:
            return len(Windows(self.val_tokens, seq_len, self.bos_aligned))
        except ValueError:  # no window fits
            return 0
