"""The learning-rate schedule: linear warm-up, then cosine, warmup-stable-decay (wsd) or constant."""
from __future__ import annotations

import math

from omegaconf import DictConfig


def learning_rate(step: int, cfg: DictConfig, max_steps: int) -> float:
    """Learning rate at optimiser step ``step`` (1-based): linear warm-up, then the chosen decay."""
    o = cfg.optim
    if step <= o.warmup_steps:
        return o.lr * step / max(1, o.warmup_steps)
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps)
        return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
    if o.schedule == "wsd":
        decay_start = max_steps - int(o.decay_fraction * max_steps)
        if step <= decay_start:
            return o.lr
        progress = (step - decay_start) / max(1, max_steps - decay_start)
        return o.lr + (o.min_lr - o.lr) * min(1.0, progress)
    raise ValueError(f"optim.schedule must be cosine, wsd or constant, got '{o.schedule}'")
