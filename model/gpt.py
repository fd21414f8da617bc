"""A GPT small enough to read in one sitting: token embedding, pre-norm blocks (RMSNorm, attention of any
registered variant, GELU MLP), a final RMSNorm and an untied output head. RoPE inside attention, no
learned positions, no biases. Weights initialised as GPT-2: N(0, 0.02), and N(0, 0.02/sqrt(2·n_layer)) for
the projections that write into the residual stream.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import build_attention
from model.cache import LayerCache, StaticCache
from model.loss import cross_entropy
from model.norms import RMSNorm, at_least_fp32


def _plain(value: float | torch.Tensor) -> float | list[float]:
    """A scalar parameter's value as a float, or per-head values as a list of floats."""
    if not isinstance(value, torch.Tensor):
        return float(value)
    if hasattr(value, "full_tensor"):  # sharded by FSDP2: gathered on every rank
        value = value.full_tensor()
    value = value.detach().float().cpu()
    return float(value) if value.numel() == 1 else value.tolist()


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, n_embd, bias=False)
        self.down.residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, model_cfg, attn_cfg, layer: int):
        super().__init__()
        eps = float(model_cfg.norm_eps)
        self.attn_norm = RMSNorm(model_cfg.n_embd, eps)
        self.attn = build_attention(model_cfg, attn_cfg, layer)
        self.mlp_norm = RMSNorm(model_cfg.n_embd, eps)
        self.mlp = MLP(model_cfg.n_embd, int(model_cfg.mlp_ratio * model_cfg.n_embd))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions, cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """GPT over ``vocab_size`` tokens. ``model_cfg``: n_layer, n_embd, n_head, mlp_ratio, norm_eps,
    rope_base, seq_len (training length), max_seq_len (longest input accepted); ``attn_cfg``: the
    Hydra ``attention`` group."""

    def __init__(self, model_cfg, attn_cfg, vocab_size: int):
        super().__init__()
        self.max_seq_len = int(model_cfg.max_seq_len)
        self.vocab_size = int(vocab_size)
        self.embed = nn.Embedding(vocab_size, model_cfg.n_embd)
        self.blocks = nn.ModuleList(Block(model_cfg, attn_cfg, i) for i in range(model_cfg.n_layer))
        self.final_norm = RMSNorm(model_cfg.n_embd, float(model_cfg.norm_eps))
        self.lm_head = nn.Linear(model_cfg.n_embd, vocab_size, bias=False)
        self._init_weights(model_cfg.n_layer)
        self.context = None  # see split_context
        self.loss_chunk: int | None = None  # tokens per chunk of the training loss (model.loss); None: all at once
        # the parts that follow a training schedule (set_step), found once: set_step runs before every step
        self._scheduled = [m for m in self.modules() if m is not self and hasattr(m, "set_step")]

    def _init_weights(self, n_layer: int) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = 0.02 / math.sqrt(2 * n_layer) if getattr(module, "residual_projection", False) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: StaticCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab) in float32 (float64 for a float64 model), mean cross-entropy
        or None). With ``loss_chunk`` set and targets given, the loss is computed chunk by chunk (model.loss) and the
        logits, never whole, are None.

        With ``cache`` (``new_cache``), idx continues each row's cached tokens at the row's own positions and its
        keys and values are stored: several tokens only into an empty cache (a prefill), then one per row at a
        time; every row grows by T (``prefill`` takes right-padded prompts of different lengths). Under context
        parallelism (``split_context``) idx holds this process's chunks of each sequence, and the loss is the mean
        over its own tokens."""
        positions = self._positions(idx, cache)
        hidden = self._trunk(idx, positions, cache)
        if targets is not None and self.loss_chunk is not None and cache is None:
            return None, cross_entropy(hidden, self.lm_head.weight, targets, self.loss_chunk)
        logits = at_least_fp32(self.lm_head(hidden))
        if cache is not None:
            cache.advance(idx.shape[1])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def split_context(self, context) -> None:
        """Split every forward's sequences over a context-parallel group (a training.context_parallel.ContextParallel:
        idx then holds this process's chunks, at their absolute positions), or, with None, take whole sequences."""
        self.context = context
        for block in self.blocks:
            block.attn.context = context

    def _positions(self, idx: torch.Tensor, cache: StaticCache | None) -> torch.Tensor:
        """Absolute positions of idx's tokens: (T,) without a cache, (B, T) at each row's length with one."""
        B, T = idx.shape
        if cache is None:
            length = T if self.context is None else self.context.sequence_length(T)
            if length > self.max_seq_len:
                raise ValueError(f"sequence of {length} tokens exceeds model.max_seq_len={self.max_seq_len}")
            if self.context is not None:
                return self.context.positions(T, idx.device)
            return torch.arange(T, device=idx.device)
        cache.check(T, B)
        return cache.positions(T)

    def _trunk(self, idx: torch.Tensor, positions: torch.Tensor, cache: StaticCache | None) -> torch.Tensor:
        """The final-normed hidden states (B, T, d_model)."""
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, cache[i] if cache is not None else None)
        return self.final_norm(x)

    def new_cache(self, batch: int, length: int) -> StaticCache:
        """An empty static key/value cache for ``batch`` rows of up to ``length`` tokens each (prompt and new tokens),
        on the model's device; its buffers are allocated by the first forward that uses it."""
        if length > self.max_seq_len:
            raise ValueError(f"a cache of {length} positions exceeds model.max_seq_len={self.max_seq_len}")
        return StaticCache(len(self.blocks), batch, length, self.embed.weight.device, self.max_seq_len)

    def prefill(self, idx: torch.Tensor, cache: StaticCache, lengths: list[int] | None = None) -> torch.Tensor:
        """Run right-padded prompts idx (B, T) into the empty ``cache``; row b's prompt is its first lengths[b] tokens
        (default: all T). Returns the logits (B, vocab) in float32 (float64 for a float64 model) after each row's last
        prompt token."""
        B, T = idx.shape
        lengths = [T] * B if lengths is None else [int(n) for n in lengths]
        if len(lengths) != B or not all(1 <= n <= T for n in lengths):
            raise ValueError(f"lengths must give {B} prompt lengths from 1 to {T}, got {lengths}")
        hidden = self._trunk(idx, self._positions(idx, cache), cache)
        cache.advance(T, lengths)
        last = (cache.lengths - 1).view(B, 1, 1).expand(B, 1, hidden.shape[-1])
        return at_least_fp32(self.lm_head(hidden.gather(1, last)[:, 0]))

    def decode_step(self, tokens: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """One token per row, tokens (B,), after each row's cached tokens -> logits (B, vocab) in float32. Reads
        nothing back to the host (a CUDA graph can capture it: model.generate)."""
        return self(tokens[:, None], cache=cache)[0][:, 0]

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
        """Continue idx (B, T) by up to ``max_new_tokens`` tokens with a static key/value cache -> (B, T + n);
        ``options``: temperature (0 = greedy), top_k, stop_token, generator, lengths (right-padded prompts of
        different lengths), graphs (CUDA graphs on CUDA, default on); see model.generate."""
        from model.generate import generate

        return generate(self, idx, max_new_tokens, **options)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on the matrices of linear layers only; none on the embedding, norms, biases,
        λ, β and the Differential Transformer's λ vectors."""
        linear = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (decay if id(param) in linear else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def attention_scalars(self) -> dict[str, list]:
        """λ (TDA, differential) and β (TDA, TRA) of every layer: {"lambda_per_layer": [...],
        "beta_per_layer": [...]}, and "<name>_per_layer" for each scalar an attention's ``scalars()`` names
        (sigmoid's bias, the sink logit, SSMax's s); each entry a float or a list of per-head floats; a key
        is absent when the attention has no such parameter."""
        out: dict[str, list] = {}
        for block in self.blocks:
            values = {}
            for key, name in (("lambda_per_layer", "lam"), ("beta_per_layer", "beta")):
                fn = getattr(block.attn, name, None)
                if callable(fn):
                    values[key] = fn()
            named = getattr(block.attn, "scalars", None)
            if callable(named):
                values.update((f"{key}_per_layer", value) for key, value in named().items())
            for key, value in values.items():
                out.setdefault(key, []).append(_plain(value))
        return out

    def set_step(self, step: int) -> None:
        """Tell the parts that follow a training schedule (the threshold variants' β warm-up,
        ``attention.beta_warmup_steps``) how many optimiser steps have been taken (0 before the first). The
        training loop calls it before every step, and on resume with the restored step; a model that is
        never told (evaluation, analysis) runs at the end of every schedule."""
        for module in self._scheduled:
            module.set_step(step)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
