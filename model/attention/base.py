"""What every attention variant shares: the registry, the projections the analysis reads, the base module
(projections, RoPE, cache, context parallelism, output) and the softmax helpers (SDPA with a lower-right causal
mask, exact softmax maps)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import CausalBias, causal_lower_right

from kernels.inputs import pair_views
from model.cache import LayerCache
from model.norms import at_least_fp32
from model.rope import apply_rope, rope_rotation, rotate


ATTENTIONS: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        ATTENTIONS[name] = cls
        cls.variant = name
        return cls

    return add


@dataclass
class Projections:
    """Per-head projections of one layer: q and k views (B, H, T, d) after RoPE, v (B, Hv, T, dv). ``paired_qk``: in the
    paired head layout, the whole q and k (B, 2H, T, d) whose even and odd heads are the two views (pair_views), for
    kernels that take them whole; None in the other layouts."""

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: torch.Tensor
    paired_qk: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def paired(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> "Projections":
        """The paired head layout's projections from the whole q and k (B, 2H, T, d): the views are their even and
        odd heads."""
        return cls(list(pair_views(q)), list(pair_views(k)), v, paired_qk=(q, k))


def build_attention(model_cfg, attn_cfg, layer: int) -> nn.Module:
    """The attention module named by ``attn_cfg.name`` for layer ``layer`` (0-based)."""
    name = attn_cfg.name
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention '{name}'; choose one of: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name](model_cfg, attn_cfg, layer)


def causal_mask(n_queries: int, n_keys: int, device) -> torch.Tensor:
    """(Tq, Tk) boolean mask, True where key j is visible to query i (queries aligned to the end)."""
    offset = n_keys - n_queries
    return torch.arange(n_keys, device=device)[None, :] <= torch.arange(n_queries, device=device)[:, None] + offset


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads·d) -> (B, heads, T, d)."""
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) -> (B, T, heads·d)."""
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


class _Attention(nn.Module):
    """Shared parts: q/k/v/output projections, RoPE, the cache, and the softmax map."""

    variant = ""
    context = None  # a training.context_parallel.ContextParallel while sequences are split over processes

    def __init__(self, model_cfg, attn_cfg, layer: int):
        super().__init__()
        C, n_head = model_cfg.n_embd, model_cfg.n_head
        if C % n_head:
            raise ValueError(f"model.n_embd ({C}) must be divisible by model.n_head ({n_head})")
        self.n_embd, self.n_head, self.head_dim, self.layer = C, n_head, C // n_head, layer
        self.rope_base = float(model_cfg.rope_base)
        self.rope_ntk_factor = float(model_cfg.get("rope_ntk_factor", 1.0))
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.out_proj = nn.Linear(C, C, bias=False)
        self.out_proj.residual_projection = True

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, positions, self.rope_base, self.rope_ntk_factor)

    def rotated(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k (B, H, T, d) rotated by RoPE at ``positions``, the rotation computed once for both."""
        rotation = rope_rotation(positions, q.shape[-1], self.rope_base, self.rope_ntk_factor, q.dtype)
        return rotate(q, *rotation), rotate(k, *rotation)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> Projections:
        q, k = self.rotated(_split_heads(self.q_proj(x), self.n_head), _split_heads(self.k_proj(x), self.n_head),
                            positions)
        return Projections([q], [k], _split_heads(self.v_proj(x), self.n_head))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        proj = self.project(x, positions)
        if cache is None:
            heads = self.attend(proj)
        else:
            cache.write(proj.k, proj.v, positions)
            if x.shape[1] == 1:
                heads = self.head_output(self.decode_mix(proj.q, cache, positions.reshape(-1).expand(x.shape[0])))
            else:
                heads = self.attend(proj)
        return self.out_proj(self.output(heads, x))

    def attend(self, proj: Projections) -> torch.Tensor:
        """Per-head attention output (B, H, Tq, dv), after any per-head normalisation.

        Under context parallelism (``context``, set by ``GPT.split_context``) ``proj`` holds this process's chunks of
        each sequence: the keys and values of the whole sequence are gathered from the group, and each chunk's queries
        attend to the keys up to the chunk's end. ``mix`` aligns queries to the end of the keys, so every query then
        sits at its absolute position and the rows are exactly those of the whole sequence's attention."""
        if self.context is None:
            return self.head_output(self.mix(proj))
        if proj.paired_qk is None:
            *keys, values = self.context.gather([*proj.k, proj.v])

            def chunk(start: int, stop: int, end: int) -> Projections:
                return Projections([q[:, :, start:stop] for q in proj.q], [k[:, :, :end] for k in keys],
                                   values[:, :, :end])
        else:  # the keys gathered whole, each chunk's views taken from its whole q and k
            (q, _), (k, values) = proj.paired_qk, self.context.gather([proj.paired_qk[1], proj.v])

            def chunk(start: int, stop: int, end: int) -> Projections:
                return Projections.paired(q[:, :, start:stop], k[:, :, :end], values[:, :, :end])
        mixed = [self.mix(chunk(*c)) for c in self.context.chunks(proj.v.shape[2])]
        return self.head_output(torch.cat(mixed, dim=2))

    def mix(self, proj: Projections) -> torch.Tensor:
        """The attention weights applied to v, (B, H, Tq, dv): exactly ``maps(proj)["combined"] @ v``."""
        raise NotImplementedError

    def decode_mix(self, q: list[torch.Tensor], cache: LayerCache, positions: torch.Tensor) -> torch.Tensor:
        """``mix`` for one query per row against the cache: q the views' queries (B, H, 1, d), positions (B,) the
        queries' absolute positions (each sees cache positions 0 … its own) -> (B, H, 1, dv)."""
        raise NotImplementedError

    def head_output(self, mixed: torch.Tensor) -> torch.Tensor:
        """What follows the weighted sum inside each head (identity unless a variant normalises)."""
        return mixed

    def output(self, heads: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """From per-head outputs (B, H, T, dv) to the input of the output projection (B, T, d_model)."""
        return _merge_heads(heads)

    def maps(self, proj: Projections, rows: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Exact attention weights of query rows [start, stop) (default: all), over the keys up to the
        last row's position: {"combined": final weights, "view1"[, "view2"]}, each (B, H, rows, keys)."""
        raise NotImplementedError


@torch.compiler.disable  # torch.compile cannot build the mask object inside a graph (it can take one in)
def _lower_right(n_queries: int, n_keys: int) -> CausalBias:
    return causal_lower_right(n_queries, n_keys)


# The order in which SDPA tries its fused softmax kernels here. torch tries FlashAttention-2 first; on Hopper cuDNN's
# kernel runs causal forward+backward markedly faster (BENCHMARKS.md, "Training throughput"), so it goes first and
# the others stay behind it for what cuDNN refuses (float32, the CPU, some head sizes). Same mathematics either way.
SDPA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
              SDPBackend.MATH]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention, queries aligned to the end of the keys (a decoding step sees all keys, a context-
    parallel chunk the keys up to its own); ``scale`` on the scores, 1/√(q's head dimension) by default. Fewer
    queries than keys take torch's lower-right causal mask, which the fused kernels apply without a Tq×Tk mask.
    SDPA picks its kernel in SDPA_ORDER (torch.compile keeps the choice: the context traces without a break)."""
    Tq, Tk = q.shape[2], k.shape[2]
    with sdpa_kernel(SDPA_ORDER, set_priority=True):
        if Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        if Tq == 1:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_lower_right(Tq, Tk), scale=scale)


def _softmax_maps(proj: Projections, head_dim: int, rows, sink: torch.Tensor | None = None
                  ) -> dict[str, torch.Tensor]:
    """Per-view softmax maps of rows [start, stop), over the keys up to the last row's position; with
    ``sink`` (H,), each head's denominator also holds e^{sink_h} (a key of that score and value 0)."""
    Tq, Tk = proj.q[0].shape[2], proj.k[0].shape[2]
    start, stop = rows if rows is not None else (0, Tq)
    n_keys = stop + Tk - Tq
    keep = causal_mask(Tq, Tk, proj.q[0].device)[start:stop, :n_keys]
    out = {}
    for i, (q, k) in enumerate(zip(proj.q, proj.k), start=1):
        scores = at_least_fp32(q[:, :, start:stop]) @ at_least_fp32(k[:, :, :n_keys]).transpose(-1, -2)
        scores = (scores / math.sqrt(head_dim)).masked_fill(~keep, float("-inf"))
        if sink is None:
            out[f"view{i}"] = scores.softmax(dim=-1)
        else:
            sink_h = sink.to(scores.dtype)[:, None, None]
            out[f"view{i}"] = (scores - torch.logaddexp(scores.logsumexp(dim=-1, keepdim=True), sink_h)).exp()
    return out
