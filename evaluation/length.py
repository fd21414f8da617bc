"""length_extrapolation: perplexity at multiples of the training length, with and without NTK-aware
RoPE scaling.

At m × the training length, "ntk" multiplies the RoPE NTK factor of every attention module by m
(base' = base · factor^(d/(d−2)), model/rope.py) for that evaluation only; "plain" keeps the model's own
factor (1 unless it was trained with one). Both run on the same fixed validation windows of that length;
every length evaluates about ``length.tokens`` tokens (all the split has when it holds fewer).

A length the model cannot take (beyond its max_seq_len) or the validation split cannot fill is skipped,
and the result names it with the reason (``skipped``); nothing to run at all is a ValueError.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

from evaluation import options, plots
from evaluation.context import EvalContext
from evaluation.val_loss import loss_by_position, no_window, stored_curve
from model.gpt import GPT


@contextmanager
def rope_ntk_scaling(model: GPT, scale: float) -> Iterator[None]:
    """Multiply every attention module's RoPE NTK factor by ``scale`` inside the block (weights untouched)."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    attns = [block.attn for block in model.blocks]
    saved = [attn.rope_ntk_factor for attn in attns]
    try:
        for attn, factor in zip(attns, saved):
            attn.rope_ntk_factor = factor * float(scale)
        yield
    finally:
        for attn, factor in zip(attns, saved):
            attn.rope_ntk_factor = factor


def _plan(ctx: EvalContext) -> tuple[list[tuple[int, int]], dict[str, str]]:
    """([(multiple, length)] to evaluate, {"<m>x": why it is skipped})."""
    multiples = options.integers(ctx.cfg, "length.multiples", low=1)
    options.integer(ctx.cfg, "length.tokens", low=1)
    options.integer(ctx.cfg, "batch_size", low=1)
    lengths, skipped = [], {}
    for m in multiples:
        length = m * ctx.train_len
        if length > ctx.model.max_seq_len:
            skipped[f"{m}x"] = (f"{m} x the training length {ctx.train_len} = {length} tokens exceeds the model's "
                                f"max_seq_len={ctx.model.max_seq_len}")
        elif not ctx.validation_windows(length):
            skipped[f"{m}x"] = no_window(ctx, length)
        else:
            lengths.append((m, length))
    if not lengths:
        raise ValueError("length.multiples: no length can be evaluated: "
                         + "; ".join(f"{m}: {why}" for m, why in skipped.items()))
    return lengths, skipped


def check(ctx: EvalContext) -> None:
    _plan(ctx)


def run(ctx: EvalContext) -> dict:
    results: dict[str, dict] = {}
    curves: dict[str, list[float]] = {}
    lengths, skipped = _plan(ctx)
    for key, why in skipped.items():
        print(f"length_extrapolation: {key} skipped: {why}", flush=True)
    for m, length in lengths:
        sequences = max(1, int(ctx.cfg.length.tokens) // length)
        batch_size = min(int(ctx.cfg.batch_size), sequences)
        entry = {"multiple": m, "seq_len": length}
        for mode in ("plain", "ntk"):
            if mode == "ntk" and m == 1:
                entry["ntk"] = entry["plain"]  # a factor of 1 is the plain model
                continue
            with rope_ntk_scaling(ctx.model, m if mode == "ntk" else 1):
                per_position, count = loss_by_position(ctx, length, batch_size, max(1, sequences // batch_size),
                                                       note=mode == "plain")
            loss = float(per_position.mean())
            entry[mode] = {"loss": loss, "perplexity": math.exp(loss), "sequences": count,
                           "loss_by_position": stored_curve(per_position)}
            curves[f"{m}x {mode}"] = per_position.tolist()
        results[f"{m}x"] = entry
        print(f"length {length}: perplexity {entry['plain']['perplexity']:.3f} plain, "
              f"{entry['ntk']['perplexity']:.3f} with NTK", flush=True)
    lengths = [entry["seq_len"] for entry in results.values()]
    plots.perplexity_by_length(lengths, {mode: [e[mode]["perplexity"] for e in results.values()]
                                         for mode in ("plain", "ntk")}, ctx.out_dir / "length_extrapolation")
    plots.loss_by_position(curves, ctx.out_dir / "length_loss_by_position", ctx.train_len)
    return {"train_len": ctx.train_len, "lengths": results, "skipped": skipped}
