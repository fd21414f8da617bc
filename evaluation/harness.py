"""A thin adapter from our GPT to lm-evaluation-harness's ``LM`` interface, so the harness's tasks run
on a checkpoint as it is (no conversion to another format). Imports lm_eval: load it only when used.

- loglikelihood: (context, continuation) strings -> (log p(continuation | context), is greedy); an empty
  context is replaced by the end-of-text token (with ``bos``, for a model trained on BOS-aligned windows,
  every context starts with it), and contexts longer than ``max_length`` lose tokens on the left.
- loglikelihood_rolling: the log-likelihood of a whole text after the end-of-text token, in disjoint
  windows of ``max_length`` tokens (the harness's own windowing, so every token is predicted once).
- generate_until: greedy decoding with the key/value cache (sampling options are ignored), cut at the
  first stop string.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import tiktoken
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from evaluation.likelihood import score_continuations
from model.gpt import GPT


class HarnessLM(LM):
    """``model`` (a GPT in eval mode) with its tokenizer ``enc``; ``max_length`` tokens of context at most
    (default: model.max_seq_len); requests are scored ``batch_size`` at a time."""

    def __init__(self, model: GPT, enc: tiktoken.Encoding, max_length: int | None = None, batch_size: int = 16,
                 max_gen_toks: int = 128, autocast: Callable[[], AbstractContextManager] = nullcontext,
                 bos: bool = False) -> None:
        super().__init__()
        self.model, self.enc = model, enc
        self.max_length = int(max_length or model.max_seq_len)
        if not 1 < self.max_length <= model.max_seq_len:
            raise ValueError(f"max_length={self.max_length} must be in [2, model.max_seq_len={model.max_seq_len}]")
        self.batch_size, self.max_gen_toks, self.autocast = int(batch_size), int(max_gen_toks), autocast
        self._device = next(model.parameters()).device
        self.bos = bos

    def _encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def _context(self, text: str) -> list[int]:
        """A context's tokens: the end-of-text token first with ``bos`` (or when the context is empty)."""
        tokens = self._encode(text)
        return [self.enc.eot_token] + tokens if self.bos or not tokens else tokens

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        return score_continuations(self.model, pairs, self.batch_size, self.autocast, self.max_length)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            pairs.append((self._context(context), self._encode(continuation)))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        windows, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            for window in get_rolling_token_windows(self._encode(text), self.enc.eot_token, self.max_length, 1):
                windows.append(make_disjoint_window(window))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._score(windows)):
            totals[i] += logprob
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        outputs = []
        for request in requests:
            context, options = request.args
            options = dict(options or {})
            until = options.get("until") or [self.enc.decode([self.enc.eot_token])]
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = min(int(options.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            tokens = self._context(context)[-(self.max_length - new_tokens):]
            with self.autocast():
                out = self.model.generate(torch.tensor([tokens], device=self._device), new_tokens,
                                          stop_token=self.enc.eot_token)
            generated = [t for t in out[0, len(tokens):].tolist() if t != self.enc.eot_token]
            text = self.enc.decode(generated, errors="replace")
            cut = min((text.find(s) for s in until if s and s in text), default=len(text))
            outputs.append(text[:cut])
        return outputs
