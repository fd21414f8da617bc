"""Autoregressive generation with a key/value cache, for every attention variant.

The prompt is run once through the model with fresh caches (one ``KVCache`` per layer); every new
token is then fed alone, its position being the cache's length, so each step costs one token's
projections plus attention over the cached keys. The threshold variants (TDA, TRA) compute τ, and SSMax
its factor ln(i+1), from the absolute position of the query, which the cache supplies, so cached decoding
equals recomputing the whole prefix (tested for every variant).
"""
from __future__ import annotations

import torch

from model.attention import KVCache


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop_token: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue the prompts ``idx`` (B, T) int64 by up to ``max_new_tokens`` tokens.

    ``temperature`` 0 decodes greedily (argmax); above 0, tokens are sampled from softmax(logits / T),
    restricted to the ``top_k`` most likely when given, with ``generator`` for reproducible draws.
    Generation stops early once every row has produced ``stop_token``. Returns (B, T + n) int64, the
    prompt followed by the n ≤ max_new_tokens new tokens (rows that stopped are padded with
    ``stop_token``). Raises ValueError when the prompt plus the new tokens exceed ``model.max_seq_len``.
    """
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be (batch, tokens) with at least one token, got shape {tuple(idx.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    if idx.shape[1] + max_new_tokens > model.max_seq_len:
        raise ValueError(f"prompt of {idx.shape[1]} tokens + max_new_tokens={max_new_tokens} exceeds "
                         f"model.max_seq_len={model.max_seq_len}")
    caches: list[KVCache] = model.new_caches()
    logits, _ = model(idx, caches=caches)
    out = [idx]
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        token = next_token(logits[:, -1], temperature, top_k, generator)
        if stop_token is not None:
            token = torch.where(done, torch.full_like(token, stop_token), token)
            done |= token == stop_token
        out.append(token[:, None])
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits, _ = model(token[:, None], caches=caches)
    return torch.cat(out, dim=1)


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from last-position logits (B, V): argmax at temperature 0, else a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
