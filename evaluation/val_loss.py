"""val_loss: loss and perplexity on the held-out split, and the mean loss at each token position."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from data.loader import ensure_prepared, validation_batches
from evaluation import plots
from evaluation.context import EvalContext


def check_length(ctx: EvalContext, seq_len: int, what: str) -> None:
    """ValueError when the model cannot take ``seq_len`` tokens (``what`` names the option)."""
    if seq_len < 1:
        raise ValueError(f"{what}={seq_len} must be >= 1")
    if seq_len > ctx.model.max_seq_len:
        raise ValueError(f"{what}={seq_len} exceeds the model's max_seq_len={ctx.model.max_seq_len}")


@torch.no_grad()
def loss_by_position(ctx: EvalContext, seq_len: int, batch_size: int, max_batches: int) -> tuple[torch.Tensor, int]:
    """Mean loss (nats) at each position of the fixed validation windows of ``seq_len`` tokens, laid out as
    in training (BOS-aligned or not): ((seq_len,) float64, number of sequences used)."""
    batches = validation_batches(ensure_prepared(ctx.run_cfg.data), batch_size, seq_len, max_batches,
                                 bos_aligned=ctx.bos_aligned)
    total = torch.zeros(seq_len, dtype=torch.float64)
    count = 0
    for x, y in batches:
        with ctx.autocast():
            logits, _ = ctx.model(x.to(ctx.device))
        losses = F.cross_entropy(logits.transpose(1, 2), y.to(ctx.device), reduction="none")
        total += losses.double().sum(0).cpu()
        count += x.shape[0]
    return total / count, count


def _seq_len(ctx: EvalContext) -> int:
    return int(ctx.cfg.seq_len or ctx.train_len)


def check(ctx: EvalContext) -> None:
    check_length(ctx, _seq_len(ctx), "seq_len")


def run(ctx: EvalContext) -> dict:
    seq_len = _seq_len(ctx)
    per_position, count = loss_by_position(ctx, seq_len, int(ctx.cfg.batch_size), int(ctx.cfg.max_batches))
    loss = float(per_position.mean())
    plots.loss_by_position({"validation": per_position.tolist()}, ctx.out_dir / "val_loss_by_position")
    return {"loss": loss, "perplexity": math.exp(loss), "seq_len": seq_len, "sequences": count,
            "tokens": count * seq_len, "loss_by_position": per_position.tolist()}
