"""Log-likelihoods of token continuations, batched: the one computation behind passkey scoring and the
lm-evaluation-harness adapter."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch

from model.gpt import GPT


@torch.no_grad()
def score_continuations(
    model: GPT,
    pairs: list[tuple[list[int], list[int]]],
    batch_size: int = 16,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    max_len: int | None = None,
) -> list[tuple[float, bool]]:
    """For each (context tokens, continuation tokens): (Σ log p(continuation | context) in nats, whether
    greedy decoding would produce the continuation token by token).

    The context must hold at least one token and the continuation at least one. Sequences longer than
    ``max_len`` + 1 (default ``model.max_seq_len`` + 1) lose context tokens from the left; a continuation
    longer than that is a ValueError. Pairs are run longest first in batches of ``batch_size``, padded
    on the right (causal attention: padding never changes earlier positions)."""
    max_len = int(max_len or model.max_seq_len)
    if max_len > model.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds model.max_seq_len={model.max_seq_len}")
    sequences = []
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"pair {i}: context and continuation need at least one token each")
        if len(continuation) > max_len:
            raise ValueError(f"pair {i}: continuation of {len(continuation)} tokens exceeds max_len={max_len}")
        sequences.append((list(context) + list(continuation))[-(max_len + 1):])
    device = next(model.parameters()).device
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -len(sequences[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = len(sequences[chunk[0]]) - 1
        idx = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            inputs = sequences[i][:-1]
            idx[row, :len(inputs)] = torch.tensor(inputs)
        with autocast():
            logits, _ = model(idx.to(device))
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(chunk):
            n_cont, n_in = len(pairs[i][1]), len(sequences[i]) - 1
            target = torch.tensor(sequences[i][-n_cont:], device=device)
            rows = logprobs[row, n_in - n_cont:n_in]
            total = rows.gather(1, target[:, None]).sum()
            results[i] = (float(total), bool((rows.argmax(dim=-1) == target).all()))
    return results
