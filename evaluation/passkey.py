"""passkey: retrieval of 1, 2 and 4 hidden keys over a grid of lengths × depths, scored two ways.

- exact: greedy decoding (with the key/value cache) after the prompt; correct when the first number
  in the decoded text is the queried key. Small models score near zero here.
- likelihood: the queried key against ``passkey.candidates`` − 1 other keys (the prompt's other keys
  first, then random ones); correct when the queried key has the strictly highest log-likelihood as
  the continuation of the prompt.

Each cell of the grid runs ``passkey.trials`` prompts with fresh random keys (seeded by passkey.seed).
"""
from __future__ import annotations

import random
import re

import numpy as np
import torch

from evaluation import plots
from evaluation.context import EvalContext
from evaluation.likelihood import score_continuations
from evaluation.passkey_prompt import PasskeyPrompt, make_prompt, random_key
from evaluation.val_loss import check_length
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


def _grid(ctx: EvalContext) -> tuple[list[int], list[float], list[int]]:
    cfg = ctx.cfg.passkey
    if cfg.lengths is None:
        lengths = [m * ctx.train_len for m in (1, 2, 4, 8) if m * ctx.train_len <= ctx.model.max_seq_len]
    else:
        lengths = [int(x) for x in cfg.lengths]
    depths = [float(d) for d in cfg.depths]
    keys = [int(k) for k in cfg.num_keys]
    if not lengths or not depths or not keys:
        raise ValueError("passkey.lengths, passkey.depths and passkey.num_keys must not be empty")
    if any(not 0 <= d <= 1 for d in depths):
        raise ValueError(f"passkey.depths must lie in [0, 1], got {depths}")
    if any(k < 1 for k in keys):
        raise ValueError(f"passkey.num_keys must be >= 1, got {keys}")
    return lengths, depths, keys


def check(ctx: EvalContext) -> None:
    lengths, _, keys = _grid(ctx)
    for length in lengths:
        check_length(ctx, length, "passkey length")
        try:
            make_prompt(ctx.tokenizer, length, 0.5, max(keys), random.Random(0), ctx.bos_prefix)
        except ValueError as exc:
            raise ValueError(f"passkey.lengths: {exc}") from None
    if int(ctx.cfg.passkey.trials) < 1:
        raise ValueError(f"passkey.trials must be >= 1, got {ctx.cfg.passkey.trials}")
    if int(ctx.cfg.passkey.candidates) < 2:
        raise ValueError(f"passkey.candidates must be >= 2, got {ctx.cfg.passkey.candidates}")


@torch.no_grad()
def run(ctx: EvalContext) -> dict:
    cfg = ctx.cfg.passkey
    lengths, depths, key_counts = _grid(ctx)
    enc, rng = ctx.tokenizer, random.Random(int(cfg.seed))
    exact = np.zeros((len(key_counts), len(lengths), len(depths)))
    likely = np.zeros_like(exact)
    for a, n_keys in enumerate(key_counts):
        for b, length in enumerate(lengths):
            for c, depth in enumerate(depths):
                for _ in range(int(cfg.trials)):
                    prompt = make_prompt(enc, length, depth, n_keys, rng, ctx.bos_prefix)
                    idx = torch.tensor([prompt.tokens], device=ctx.device)
                    with ctx.autocast():
                        out = ctx.model.generate(idx, len(prompt.answer) + 1)
                    text = enc.decode(out[0, len(prompt.tokens):].tolist(), errors="replace")
                    exact[a, b, c] += greedy_answer_correct(text, prompt.keys[prompt.target])
                    candidates = candidate_keys(prompt, int(cfg.candidates), rng)
                    likely[a, b, c] += likelihood_correct(ctx.model, prompt, candidates, enc.encode_ordinary,
                                                          ctx.autocast)
            print(f"passkey {n_keys} key(s), length {length}: exact {exact[a, b].mean() / cfg.trials:.2f}, "
                  f"likelihood {likely[a, b].mean() / cfg.trials:.2f}", flush=True)
    exact /= int(cfg.trials)
    likely /= int(cfg.trials)
    grids = {f"{n} key(s), {scorer}": scores[a] for scorer, scores in (("exact match", exact), ("likelihood", likely))
             for a, n in enumerate(key_counts)}
    plots.accuracy_heatmaps(grids, lengths, depths, ctx.out_dir / "passkey_heatmap", cols=len(key_counts))
    return {
        "lengths": lengths, "depths": depths, "trials": int(cfg.trials), "candidates": int(cfg.candidates),
        "chance_likelihood": 1.0 / int(cfg.candidates),
        "accuracy": {f"{n}_keys": {"exact": float(exact[a].mean()), "likelihood": float(likely[a].mean())}
                     for a, n in enumerate(key_counts)},
        "grid": {f"{n}_keys": {"exact": exact[a].tolist(), "likelihood": likely[a].tolist()}
                 for a, n in enumerate(key_counts)},
    }
