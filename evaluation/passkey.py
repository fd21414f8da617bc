"""passkey: retrieval of 1, 2 and 4 hidden keys over a grid of lengths × depths, scored two ways.

- exact: greedy decoding (with the key/value cache) after the prompt; correct when the first number
  in the decoded text is the queried key. Small models score near zero here.
- likelihood: the queried key against ``passkey.candidates`` − 1 other keys (the prompt's other keys
  first, then random ones); correct when the queried key has the strictly highest log-likelihood as
  the continuation of the prompt.

Each cell of the grid runs ``passkey.trials`` prompts with fresh random keys (seeded by passkey.seed).
A (length, number of keys) pair whose prompt does not fit in the length, or a length beyond the model's
max_seq_len, is skipped: its grid row is null and ``skipped`` names it with the reason. Nothing to run
at all is a ValueError.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from evaluation import options, plots
from evaluation.context import EvalContext
from evaluation.likelihood import score_continuations
from evaluation.passkey_prompt import PasskeyPrompt, make_prompt, random_key
from model.gpt import GPT

_NUMBER = re.compile(r"\d+")


def greedy_answer_correct(text: str, key: str) -> bool:
    """Whether the first run of digits in ``text`` (the decoded continuation) is exactly ``key``."""
    match = _NUMBER.search(text)
    return match is not None and match.group() == key


def candidate_keys(prompt: PasskeyPrompt, count: int, rng: random.Random) -> list[str]:
    """The queried key first, then the prompt's other keys, then random distinct keys: ``count`` keys."""
    if count < 2:
        raise ValueError(f"passkey.candidates must be >= 2, got {count}")
    keys = [prompt.keys[prompt.target]] + [k for i, k in enumerate(prompt.keys) if i != prompt.target]
    keys = keys[:count]
    while len(keys) < count:
        key = random_key(rng)
        if key not in keys:
            keys.append(key)
    return keys


def likelihood_correct(model: GPT, prompt: PasskeyPrompt, candidates: list[str], encode, autocast) -> bool:
    """Whether candidates[0] (the true key) has a strictly higher log-likelihood after the prompt than
    every other candidate."""
    pairs = [(prompt.tokens, encode(f" {key}")) for key in candidates]
    scores = [lp for lp, _ in score_continuations(model, pairs, batch_size=len(pairs), autocast=autocast)]
    return all(scores[0] > s for s in scores[1:])


@dataclass
class Grid:
    """The options: lengths (tokens), depths, key counts, trials per cell, candidates, seed."""

    lengths: list[int]
    depths: list[float]
    key_counts: list[int]
    trials: int
    candidates: int
    seed: int


def _grid(ctx: EvalContext) -> Grid:
    lengths = options.integers(ctx.cfg, "passkey.lengths", low=1, optional=True)
    if lengths is None:
        lengths = [m * ctx.train_len for m in (1, 2, 4, 8) if m * ctx.train_len <= ctx.model.max_seq_len]
    return Grid(lengths, options.numbers(ctx.cfg, "passkey.depths", 0.0, 1.0),
                options.integers(ctx.cfg, "passkey.num_keys", low=1), options.integer(ctx.cfg, "passkey.trials", low=1),
                options.integer(ctx.cfg, "passkey.candidates", low=2), options.integer(ctx.cfg, "passkey.seed"))


Trial = tuple[int, PasskeyPrompt, list[str]]  # (depth index, prompt, candidate keys)


def _cells(ctx: EvalContext, grid: Grid) -> Iterator[tuple[int, int, list[Trial] | str]]:
    """For every (key count a, length b), in order: its trials, or why it is skipped. The prompts and
    candidates come from one generator seeded by passkey.seed, drawn in this fixed order, so the check
    before anything runs and the run itself see the same prompts."""
    rng = random.Random(grid.seed)
    for a, n_keys in enumerate(grid.key_counts):
        for b, length in enumerate(grid.lengths):
            if length > ctx.model.max_seq_len:
                yield a, b, f"length {length} exceeds the model's max_seq_len={ctx.model.max_seq_len}"
                continue
            trials: list[Trial] = []
            try:
                for c, depth in enumerate(grid.depths):
                    for _ in range(grid.trials):
                        prompt = make_prompt(ctx.tokenizer, length, depth, n_keys, rng, ctx.bos_prefix)
                        trials.append((c, prompt, candidate_keys(prompt, grid.candidates, rng)))
            except ValueError as exc:  # the prompt does not fit in the length
                yield a, b, str(exc)
                continue
            yield a, b, trials


def _skipped(ctx: EvalContext, grid: Grid) -> dict[str, dict[str, str]]:
    """{"<n>_keys": {"<length>": why}} for every pair that cannot run; a ValueError when none can."""
    skipped: dict[str, dict[str, str]] = {}
    cells = 0
    for a, b, trials in _cells(ctx, grid):
        cells += 1
        if isinstance(trials, str):
            skipped.setdefault(f"{grid.key_counts[a]}_keys", {})[str(grid.lengths[b])] = trials
    if sum(len(v) for v in skipped.values()) == cells:
        reasons = sorted({why for v in skipped.values() for why in v.values()})
        raise ValueError(f"passkey.lengths={grid.lengths}, passkey.num_keys={grid.key_counts}: no prompt can "
                         f"run: {'; '.join(reasons)}")
    return skipped


def check(ctx: EvalContext) -> None:
    _skipped(ctx, _grid(ctx))


@torch.no_grad()
def run(ctx: EvalContext) -> dict:
    grid = _grid(ctx)
    skipped: dict[str, dict[str, str]] = {}
    enc = ctx.tokenizer
    shape = (len(grid.key_counts), len(grid.lengths), len(grid.depths))
    exact, likely = np.full(shape, np.nan), np.full(shape, np.nan)
    for a, b, trials in _cells(ctx, grid):
        n_keys, length = grid.key_counts[a], grid.lengths[b]
        if isinstance(trials, str):
            skipped.setdefault(f"{n_keys}_keys", {})[str(length)] = trials
            print(f"passkey {n_keys} key(s), length {length}: skipped: {trials}", flush=True)
            continue
        exact[a, b], likely[a, b] = 0.0, 0.0
        for c, prompt, candidates in trials:
            idx = torch.tensor([prompt.tokens], device=ctx.device)
            with ctx.autocast():
                out = ctx.model.generate(idx, len(prompt.answer) + 1)
            text = enc.decode(out[0, len(prompt.tokens):].tolist(), errors="replace")
            exact[a, b, c] += greedy_answer_correct(text, prompt.keys[prompt.target])
            likely[a, b, c] += likelihood_correct(ctx.model, prompt, candidates, enc.encode_ordinary, ctx.autocast)
        exact[a, b] /= grid.trials
        likely[a, b] /= grid.trials
        print(f"passkey {n_keys} key(s), length {length}: exact {exact[a, b].mean():.2f}, "
              f"likelihood {likely[a, b].mean():.2f}", flush=True)
    grids = {f"{n} key(s), {scorer}": scores[a] for scorer, scores in (("exact match", exact), ("likelihood", likely))
             for a, n in enumerate(grid.key_counts)}
    plots.accuracy_heatmaps(grids, grid.lengths, grid.depths, ctx.out_dir / "passkey_heatmap",
                            cols=len(grid.key_counts))

    def mean(scores: np.ndarray) -> float | None:
        ran = scores[~np.isnan(scores)]
        return float(ran.mean()) if ran.size else None

    def rows(scores: np.ndarray) -> list[list[float] | None]:
        return [None if np.isnan(row).any() else row.tolist() for row in scores]

    return {
        "lengths": grid.lengths, "depths": grid.depths, "num_keys": grid.key_counts, "trials": grid.trials,
        "candidates": grid.candidates, "chance_likelihood": 1.0 / grid.candidates,
        "accuracy": {f"{n}_keys": {"exact": mean(exact[a]), "likelihood": mean(likely[a])}
                     for a, n in enumerate(grid.key_counts)},
        "grid": {f"{n}_keys": {"exact": rows(exact[a]), "likelihood": rows(likely[a])}
                 for a, n in enumerate(grid.key_counts)},
        "skipped": skipped,
    }
