"""Autoregressive generation over a static key/value cache, for every attention variant.

The prompts, right-padded to one width with each row's own length, are run once through the model (the prefill,
on the training kernels) into a ``StaticCache`` preallocated for the longest sequence asked for; then every row's
new token is fed alone, written into the cache in place at the row's own position, and attends over the cache
through the decoding paths (kernels/decode for the threshold and softmax families). τ (TDA, TRA), RoPE and
SSMax's ln(i + 1) use each row's absolute position, so cached decoding equals recomputing each whole prefix (tested
for every variant, and for ragged batches against each prompt alone).

On CUDA the one-token step runs as a captured CUDA graph (``Decoder``): its inputs and outputs are static buffers,
the cache's row lengths advance inside the graph, and a step costs the host one graph launch instead of hundreds of
kernel launches. ``graphs=False`` runs it eagerly; on the CPU it always runs eagerly.
"""
from __future__ import annotations

import contextlib

import torch

from model.cache import StaticCache


def _graph_autocast() -> contextlib.AbstractContextManager:
    """The caller's CUDA autocast, if any, without its weight-cast cache: a graph captured while the cache holds a
    cast would keep reading that cast after the cache is cleared (torch's advice for capturing under autocast)."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


class Decoder:
    """Prefill, then one token per row at a time, over a static cache of ``batch`` rows × ``length`` positions.

    With ``graphs`` (and a model on CUDA) the first ``step`` captures the model's one-token step in a CUDA graph
    (after a warm-up that compiles any kernel, the cache's lengths restored afterwards) and every step replays it:
    the tokens are copied into the graph's input, the returned logits are its output buffer, valid until the next
    step."""

    def __init__(self, model: torch.nn.Module, batch: int, length: int, graphs: bool = True):
        self.model = model
        self.cache: StaticCache = model.new_cache(batch, length)
        self.graphs = bool(graphs) and self.cache.lengths.is_cuda
        self.graph: torch.cuda.CUDAGraph | None = None
        self.tokens: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """The prompts idx (B, T), right-padded, row b's prompt its first lengths[b] tokens -> logits (B, vocab)
        after each row's last prompt token."""
        return self.model.prefill(idx, self.cache, lengths)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new token per row, tokens (B,) -> logits (B, vocab) of the token after it."""
        if not self.graphs:
            return self.model.decode_step(tokens, self.cache)
        self.cache.check(1, tokens.shape[0])
        if self.graph is None:
            self._capture(tokens)
        self.tokens.copy_(tokens)
        self.graph.replay()
        self.cache.longest += 1
        return self.logits

    def _capture(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens.clone()
        state = self.cache.snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _graph_autocast():
            for _ in range(2):  # compiles the kernels and lets cuBLAS pick its algorithms outside the capture
                self.model.decode_step(self.tokens, self.cache)
                self.cache.restore(state)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), _graph_autocast():
            self.logits = self.model.decode_step(self.tokens, self.cache)
        self.cache.restore(state)  # the capture ran nothing on the device, but counted the step on the host


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop_token: int | None = None,
    generator: torch.Generator | None = None,
    lengths: list[int] | torch.Tensor | None = None,
    graphs: bool = True,
    pad_token: int = 0,
) -> torch.Tensor:
    """Continue the prompts ``idx`` (B, T) int64 by up to ``max_new_tokens`` tokens.

    ``temperature`` 0 decodes greedily (argmax); above 0, tokens are sampled from softmax(logits / T),
    restricted to the ``top_k`` most likely when given, with ``generator`` for reproducible draws.
    Generation stops early once every row has produced ``stop_token``. ``lengths`` (B,) makes idx right-padded
    prompts of different lengths (row b's prompt is its first lengths[b] tokens; default: all T). ``graphs``: run
    the decoding step as a CUDA graph on CUDA (ignored on the CPU).

    Returns (B, T + n) int64 with n ≤ max_new_tokens: row b holds its prompt, its n new tokens, then ``pad_token``
    up to the width (a row that produced ``stop_token`` repeats it until every row has). Raises ValueError when the
    longest prompt plus the new tokens exceed ``model.max_seq_len``.
    """
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be (batch, tokens) with at least one token, got shape {tuple(idx.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    B, T = idx.shape
    lengths = [T] * B if lengths is None else [int(n) for n in (lengths.tolist() if torch.is_tensor(lengths)
                                                                else lengths)]
    if len(lengths) != B or not all(1 <= n <= T for n in lengths):
        raise ValueError(f"lengths must give {B} prompt lengths from 1 to {T}, got {lengths}")
    longest = max(lengths)
    if longest + max_new_tokens > model.max_seq_len:
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} = "
                         f"{longest + max_new_tokens} exceeds model.max_seq_len={model.max_seq_len}")
    columns = torch.arange(T + max_new_tokens, device=idx.device)
    starts = torch.tensor(lengths, device=idx.device)
    out = torch.where(columns[None, :] < starts[:, None], torch.nn.functional.pad(idx, (0, max_new_tokens)),
                      torch.full((), pad_token, dtype=idx.dtype, device=idx.device))
    if max_new_tokens == 0:
        return out[:, :T]
    decoder = Decoder(model, B, max(T, longest + max_new_tokens), graphs=graphs)
    logits = decoder.prefill(idx, lengths)
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    new = 0
    for step in range(max_new_tokens):
        token = next_token(logits, temperature, top_k, generator)
        if stop_token is not None:
            token = torch.where(done, torch.full_like(token, stop_token), token)
            done |= token == stop_token
        out.scatter_(1, (starts + step)[:, None], token[:, None])
        new = step + 1
        if step == max_new_tokens - 1 or (stop_token is not None and bool(done.all())):
            break
        logits = decoder.step(token)
    return out[:, :T + new]


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
