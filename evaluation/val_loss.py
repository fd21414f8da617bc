"""val_loss: loss and perplexity on the held-out split, and the mean loss at each token position."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from data.loader import validation_batches
from evaluation import options, plots
from evaluation.context import EvalContext


def check_length(ctx: EvalContext, seq_len: int, what: str) -> None:
    """ValueError when the model cannot take ``seq_len`` tokens (``what`` names the option)."""
    if seq_len < 1:
        raise ValueError(f"{what}={seq_len} must be >= 1")
    if seq_len > ctx.model.max_seq_len:
        raise ValueError(f"{what}={seq_len} exceeds the model's max_seq_len={ctx.model.max_seq_len}")


def no_window(ctx: EvalContext, seq_len: int) -> str:
    """Why the validation split holds no window of ``seq_len`` tokens."""
    return (f"the validation split ({ctx.val_tokens.n_tokens} tokens) holds no window of {seq_len} + 1 tokens"
            + (" in the BOS-aligned layout" if ctx.bos_aligned else ""))


@torch.no_grad()
def loss_by_position(ctx: EvalContext, seq_len: int, batch_size: int, max_batches: int,
                     note: bool = True) -> tuple[torch.Tensor, int]:
    """Mean loss (nats) at each position of the fixed validation windows of ``seq_len`` tokens, laid out as
    in training (BOS-aligned or not): ((seq_len,) float64, number of sequences used). A split smaller than
    one batch gives one batch of every window it has (printed as a note when ``note``)."""
    with warnings.catch_warnings():  # a split smaller than one batch: said once below, not as a warning
        warnings.simplefilter("ignore", UserWarning)
        batches = validation_batches(ctx.shard_dir, batch_size, seq_len, max_batches, bos_aligned=ctx.bos_aligned)
    if note and batches.note:
        print(f"note: {batches.note}", flush=True)
    total = torch.zeros(seq_len, dtype=torch.float64)
    count = 0
    for x, y in batches:
        with ctx.autocast():
            logits, _ = ctx.model(x.to(ctx.device))
        losses = F.cross_entropy(logits.transpose(1, 2), y.to(ctx.device), reduction="none")
        total += losses.double().sum(0).cpu()
        count += x.shape[0]
    return total / count, count


def stored_curve(per_position: torch.Tensor) -> list[float]:
    """A per-position loss curve as the result JSON keeps it: rounded to 1e-4 nats (far below the spread of a mean
    over the validation windows, tenths of a nat at one position), which keeps a study's kept results small; the
    summary loss is taken unrounded."""
    return [round(x, 4) for x in per_position.tolist()]


def _seq_len(ctx: EvalContext) -> int:
    return options.integer(ctx.cfg, "seq_len", low=1, optional=True) or ctx.train_len


def check(ctx: EvalContext) -> None:
    seq_len = _seq_len(ctx)
    check_length(ctx, seq_len, "seq_len")
    if not ctx.validation_windows(seq_len):
        raise ValueError(f"seq_len={seq_len}: {no_window(ctx, seq_len)}; pass a shorter seq_len=")


def run(ctx: EvalContext) -> dict:
    seq_len = _seq_len(ctx)
    per_position, count = loss_by_position(ctx, seq_len, options.integer(ctx.cfg, "batch_size", low=1),
                                           options.integer(ctx.cfg, "max_batches", low=1))
    loss = float(per_position.mean())
    plots.loss_by_position({"validation": per_position.tolist()}, ctx.out_dir / "val_loss_by_position")
    return {"loss": loss, "perplexity": math.exp(loss), "seq_len": seq_len, "sequences": count,
            "tokens": count * seq_len, "loss_by_position": stored_curve(per_position)}
