"""Attention variants behind one registry (SPEC §1–2).

Every variant has the same interface:

    forward(x, positions, cache=None) -> y          x, y: (B, T, d_model); positions: (T,) or (B, T) absolute
    project(x, positions) -> Projections            the module's own q, k (after RoPE) and v
    maps(proj, rows) -> {"combined", "view1"[, "view2"]}   exact attention weights of a block of rows
    decode_mix(q, cache, positions) -> (B, H, 1, dv)       one decoding step against the cache (before head_output)

``project`` and ``maps`` are what the analysis probe uses to recompute attention exactly. ``cache`` is the layer's
part of a ``model.cache.StaticCache``: a forward of several tokens (the prefill of right-padded prompts, into an
empty cache) stores its keys and values at positions 0 … T − 1 and runs the training kernels; a forward of one
token per row stores it at the row's own position (positions (B, 1)) and runs ``decode_mix`` over the cache, in
which each row's query sees cache positions 0 … its position, and τ (threshold variants) and ln(i + 1) (SSMax) use
that position. The decoding paths are the kernels of ``kernels.decode`` (threshold and softmax families) or exact
PyTorch (sigmoid, softpick; every variant where the kernels do not run), and none of them synchronises with the
host, so the step can be captured in a CUDA graph. Under context parallelism (training/context_parallel.py) the
module's ``context`` is set and a forward sees this process's chunks of each sequence at their absolute positions;
``attend`` gathers the keys and values of the rest. A variant with learnable scalars of its own names them in
``scalars()`` (reported with λ and β by ``GPT.attention_scalars``). Variants register themselves with
``@register("name")``; ``build_attention`` makes one from the Hydra ``attention`` config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import CausalBias, causal_lower_right

from kernels import (sigmoid_attention, sigmoid_attention_weights, sink_softmax_attention, softpick_attention,
                     softpick_attention_weights, threshold_attention, threshold_attention_weights)
from kernels.decode import softmax_decode, threshold_decode
from kernels.sigmoid.reference import RULE as SIGMOID_RULE
from kernels.softpick.reference import RULE as SOFTPICK_RULE
from model.cache import LayerCache
from model.norms import GatedRMSNorm, RMSNorm, at_least_fp32
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
    """Per-head projections of one layer: q and k views (B, H, T, d) after RoPE, v (B, Hv, T, dv)."""

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: torch.Tensor


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
        *keys, values = self.context.gather([*proj.k, proj.v])
        mixed = [self.mix(Projections([q[:, :, start:stop] for q in proj.q], [k[:, :, :end] for k in keys],
                                      values[:, :, :end]))
                 for start, stop, end in self.context.chunks(proj.v.shape[2])]
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


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention, queries aligned to the end of the keys (a decoding step sees all keys, a context-
    parallel chunk the keys up to its own); ``scale`` on the scores, 1/√(q's head dimension) by default. Fewer
    queries than keys take torch's lower-right causal mask, which the fused kernels apply without a Tq×Tk mask."""
    Tq, Tk = q.shape[2], k.shape[2]
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


@register("softmax")
class SoftmaxAttention(_Attention):
    """Causal softmax attention through torch's scaled_dot_product_attention (flash / cuDNN on GPU)."""

    def mix(self, proj: Projections) -> torch.Tensor:
        return _sdpa(proj.q[0], proj.k[0], proj.v)

    def decode_mix(self, q, cache, positions):
        return softmax_decode(q[0][:, :, 0], cache.k[0], cache.v, positions=positions)[:, :, None]

    def maps(self, proj, rows=None):
        out = _softmax_maps(proj, self.head_dim, rows)
        out["combined"] = out["view1"]
        return out


@register("gated_softmax")
class GatedSoftmaxAttention(SoftmaxAttention):
    """Softmax attention whose output is gated per channel by sigmoid(x·W_g) (Qiu et al. 2025, their best:
    an elementwise, head-specific gate after SDPA, before the output projection)."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.gate_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)

    def output(self, heads, x):
        return _merge_heads(heads) * torch.sigmoid(self.gate_proj(x))


class _PairedHeads(_Attention):
    """The Differential Transformer's head layout: n_head/2 heads whose q and k are split into two
    adjacent sub-heads of dimension d (views 1 and 2) and whose v has dimension 2d."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        if self.n_head % 2:
            raise ValueError(
                f"attention '{attn_cfg.name}' with the paired head layout needs an even model.n_head, "
                f"got {self.n_head}")
        self.pairs = self.n_head // 2

    def project(self, x, positions):
        q, k = self.rotated(_split_heads(self.q_proj(x), self.n_head), _split_heads(self.k_proj(x), self.n_head),
                            positions)
        v = _split_heads(self.v_proj(x), self.pairs)
        return Projections([q[:, 0::2], q[:, 1::2]], [k[:, 0::2], k[:, 1::2]], v)


@register("differential")
class DifferentialAttention(_PairedHeads):
    """Differential Transformer v1 (Ye et al., ICLR 2025), exactly as SPEC §2:
    (softmax(q¹k¹ᵀ/√d) − λ softmax(q²k²ᵀ/√d))·v, λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init,
    λ_init = 0.8 − 0.6·exp(−0.3·layer), then a per-head RMSNorm over 2d (eps 1e-5) and × (1 − λ_init)."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        d = self.head_dim
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer)
        std = float(attn_cfg.get("lambda_std", 0.1))
        self.lambda_q1 = nn.Parameter(torch.randn(d) * std)
        self.lambda_k1 = nn.Parameter(torch.randn(d) * std)
        self.lambda_q2 = nn.Parameter(torch.randn(d) * std)
        self.lambda_k2 = nn.Parameter(torch.randn(d) * std)
        self.head_norm = RMSNorm(2 * d, float(attn_cfg.get("norm_eps", 1e-5)))

    def lam(self) -> torch.Tensor:
        q1, k1, q2, k2 = (at_least_fp32(t) for t in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2))
        return torch.exp(q1 @ k1) - torch.exp(q2 @ k2) + self.lambda_init

    def mix(self, proj):
        lam = self.lam().to(proj.v.dtype)
        return _sdpa(proj.q[0], proj.k[0], proj.v) - lam * _sdpa(proj.q[1], proj.k[1], proj.v)

    def decode_mix(self, q, cache, positions):
        lam = self.lam().to(cache.v.dtype)
        views = [softmax_decode(qv[:, :, 0], kv, cache.v, positions=positions) for qv, kv in zip(q, cache.k)]
        return (views[0] - lam * views[1])[:, :, None]

    def head_output(self, mixed):
        return self.head_norm(mixed) * (1.0 - self.lambda_init)

    def maps(self, proj, rows=None):
        out = _softmax_maps(proj, self.head_dim, rows)
        out["combined"] = out["view1"] - self.lam() * out["view2"]
        return out


class _ThresholdBeta(nn.Module):
    """β of the threshold τ_i = β·sqrt(2 ln(i+1)/d): a fixed float, or learnable per head and kept
    positive as softplus(β_raw).

    Options (each off by default, which is SPEC's β):
    - ``beta_learnable``: β per head, starting at ``beta``, or with ``beta_init_range=[lo, hi]`` at values
      spread evenly over the heads (head h of H: lo + (hi − lo)·h/(H − 1)), so that a layer starts with
      heads of a low threshold (dense, trainable) beside heads of a high one (sparse).
    - ``beta_warmup_steps`` N > 0: τ is scaled by min(1, s/N) after s optimiser steps, so training starts
      with no threshold (β = 0: half of the scores survive) and reaches the full β at step N. Why: rows
      that no score survives give no gradient to q, k or β (dS = 0 wherever the ReLU is 0), so rows empty
      from initialisation can stay empty; a layer trained dense first can align its queries and keys
      before the threshold bites. The factor is a 0-d buffer set by ``set_step`` (GPT.set_step, called by
      the training loop before every step): a tensor, so a compiled model reads the new value without a
      recompile. The buffer is not saved (persistent=False): a resumed run derives it from its step, and a
      model built or loaded for evaluation and analysis keeps the initial 1, the full β.
    """

    def __init__(self, attn_cfg, heads: int):
        super().__init__()
        self.value = float(attn_cfg.get("beta", 1.0))
        learnable = bool(attn_cfg.get("beta_learnable", False))
        spread = attn_cfg.get("beta_init_range", None)
        if spread is not None:
            if not learnable:
                raise ValueError("attention.beta_init_range sets the initial values of a learnable β: it needs "
                                 "attention.beta_learnable=true (a fixed β is attention.beta)")
            spread = [float(b) for b in spread]
            if len(spread) != 2 or not 0 < spread[0] <= spread[1]:
                raise ValueError(f"attention.beta_init_range must be [low, high] with 0 < low <= high, got {spread}")
        if learnable:
            if spread is None:
                if self.value <= 0:
                    raise ValueError("attention.beta must be > 0 when attention.beta_learnable is true")
                initial = torch.full((heads,), self.value, dtype=torch.float64)
            else:
                initial = torch.linspace(spread[0], spread[1], heads, dtype=torch.float64)
            self.raw = nn.Parameter(torch.log(torch.expm1(initial)).float())
        else:
            self.raw = None
        self.warmup_steps = attn_cfg.get("beta_warmup_steps", 0)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"attention.beta_warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.warmup_steps:
            self.register_buffer("scale", torch.ones(()), persistent=False)
            self._scale = 1.0  # the buffer's value, kept on the host to skip writes that change nothing
        else:
            self.scale = None

    def set_step(self, step: int) -> None:
        """Optimiser steps taken so far (0 before the first): the warm-up factor min(1, step/N)."""
        if self.scale is None:
            return
        factor = min(1.0, max(0, int(step)) / self.warmup_steps)
        if factor != self._scale:
            self.scale.fill_(factor)
            self._scale = factor

    def forward(self) -> float | torch.Tensor:
        beta = self.value if self.raw is None else F.softplus(at_least_fp32(self.raw))
        return beta if self.scale is None else beta * self.scale


class _ClampStraightThrough(torch.autograd.Function):
    """clamp(x, 0, 1) forward; the gradient passes unchanged at every x (a straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ThresholdLambda(nn.Module):
    """TDA's λ: ``clamp`` (λ = clamp(λ_raw, 0, 1), SPEC default), ``clamp_st`` (the same λ, with the gradient
    passed straight through the clamp), ``sigmoid`` (λ = sigmoid(θ)) or ``reparam`` (the Differential
    Transformer's exp(λq1·λk1) − exp(λq2·λk2) + λ_init), one per layer or one per head.

    Why ``clamp_st``: under ``clamp`` a λ_raw pushed below 0 gets no gradient (torch.clamp's rule), so the
    inhibitory view is off for good; with the straight-through gradient λ_raw keeps the gradient λ would
    have, and a gradient that asks for a larger λ brings it back into [0, 1]. The forward is clamp's."""

    MODES = ("clamp", "clamp_st", "sigmoid", "reparam")

    def __init__(self, attn_cfg, heads: int, head_dim: int):
        super().__init__()
        self.mode = attn_cfg.get("lambda_mode", "clamp")
        if self.mode not in self.MODES:
            raise ValueError(f"attention.lambda_mode must be one of {self.MODES}, got '{self.mode}'")
        self.init = float(attn_cfg.get("lambda_init", 0.5))
        shape = (heads,) if attn_cfg.get("lambda_per_head", False) else (1,)  # 1-D: FSDP2 shards no scalars
        if self.mode in ("clamp", "clamp_st"):
            self.raw = nn.Parameter(torch.full(shape, self.init))
        elif self.mode == "sigmoid":
            if not 0 < self.init < 1:
                raise ValueError("attention.lambda_init must be in (0, 1) with lambda_mode=sigmoid")
            self.raw = nn.Parameter(torch.full(shape, math.log(self.init / (1 - self.init))))
        else:
            std = float(attn_cfg.get("lambda_std", 0.1))
            self.vectors = nn.Parameter(torch.randn(4, *shape, head_dim) * std)

    def raw_form(self) -> tuple[torch.Tensor, str | None]:
        """(λ before its transform, the transform's name) for the decoding kernel, which applies clamp and sigmoid
        itself (clamp_st's forward is clamp's); (λ, None) for the re-parameterisation."""
        if self.mode in ("clamp", "clamp_st"):
            return self.raw, "clamp"
        return (self.raw, self.mode) if self.mode == "sigmoid" else (self(), None)

    def forward(self) -> torch.Tensor:
        if self.mode == "clamp":
            return at_least_fp32(self.raw).clamp(0.0, 1.0)
        if self.mode == "clamp_st":
            return _ClampStraightThrough.apply(at_least_fp32(self.raw))
        if self.mode == "sigmoid":
            return torch.sigmoid(at_least_fp32(self.raw))
        q1, k1, q2, k2 = at_least_fp32(self.vectors)
        return torch.exp((q1 * k1).sum(-1)) - torch.exp((q2 * k2).sum(-1)) + self.init


@register("tda")
class ThresholdDifferentialAttention(_PairedHeads):
    """Threshold Differential Attention (SPEC §1): (relu(q̂¹k̂¹ᵀ − τ)^p − λ relu(q̂²k̂²ᵀ − τ)^p)·v, then a
    per-head RMSNorm in float32 with eps 1e-6 (pinned: raw outputs are tiny at initialisation).

    ``layout=paired`` (default) splits q and k into adjacent sub-head pairs like the Differential
    Transformer (n_head/2 heads, v of dimension 2d, same parameters as softmax); ``layout=extra_proj``
    adds a second q and k projection (n_head heads of dimension d for every tensor)."""

    def __init__(self, model_cfg, attn_cfg, layer):
        self.layout = attn_cfg.get("layout", "paired")
        if self.layout not in ("paired", "extra_proj"):
            raise ValueError(f"attention.layout must be 'paired' or 'extra_proj', got '{self.layout}'")
        if self.layout == "paired":
            super().__init__(model_cfg, attn_cfg, layer)
            heads, value_dim = self.pairs, 2 * self.head_dim
        else:
            _Attention.__init__(self, model_cfg, attn_cfg, layer)
            self.q2_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)
            self.k2_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)
            heads, value_dim = self.n_head, self.head_dim
        self.beta = _ThresholdBeta(attn_cfg, heads)
        self.lam = _ThresholdLambda(attn_cfg, heads, self.head_dim)
        self.options = dict(p=float(attn_cfg.get("power", 2.0)))
        self.head_norm = RMSNorm(value_dim, float(attn_cfg.get("norm_eps", 1e-6)),
                                 gain=bool(attn_cfg.get("norm_gain", True)))

    def project(self, x, positions):
        if self.layout == "paired":
            return super().project(x, positions)
        proj = _Attention.project(self, x, positions)
        q2, k2 = self.rotated(_split_heads(self.q2_proj(x), self.n_head), _split_heads(self.k2_proj(x), self.n_head),
                              positions)
        proj.q.append(q2)
        proj.k.append(k2)
        return proj

    def mix(self, proj):
        return threshold_attention(proj.q[0], proj.k[0], proj.v, proj.q[1], proj.k[1], lam=self.lam(),
                                   beta=self.beta(), normalize=True, **self.options)

    def decode_mix(self, q, cache, positions):
        lam, transform = self.lam.raw_form()
        return threshold_decode(q[0][:, :, 0], cache.k[0], cache.v, q[1][:, :, 0], cache.k[1], positions=positions,
                                lam=lam, lam_transform=transform, beta=self.beta(), normalize=True,
                                **self.options)[:, :, None]

    def head_output(self, mixed):
        return self.head_norm(mixed)

    def maps(self, proj, rows=None):
        return threshold_attention_weights(proj.q[0], proj.k[0], proj.q[1], proj.k[1], lam=self.lam(),
                                           beta=self.beta(), normalize=True, rows=rows, **self.options)

    def scalars(self) -> dict[str, torch.Tensor]:
        """λ_raw under the clamp modes: λ (reported as lambda) hides how far outside [0, 1] λ_raw went."""
        return {"lambda_raw": self.lam.raw} if self.lam.mode in ("clamp", "clamp_st") else {}


@register("tra")
class ThresholdRectifiedAttention(_Attention):
    """TDA's one-view form (SPEC §1): relu(q̂k̂ᵀ − τ)^p·v with the standard head layout, then the same
    per-head RMSNorm (eps 1e-6)."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.beta = _ThresholdBeta(attn_cfg, self.n_head)
        self.options = dict(p=float(attn_cfg.get("power", 2.0)))
        self.head_norm = RMSNorm(self.head_dim, float(attn_cfg.get("norm_eps", 1e-6)),
                                 gain=bool(attn_cfg.get("norm_gain", True)))

    def mix(self, proj):
        return threshold_attention(proj.q[0], proj.k[0], proj.v, beta=self.beta(), normalize=True,
                                   **self.options)

    def decode_mix(self, q, cache, positions):
        return threshold_decode(q[0][:, :, 0], cache.k[0], cache.v, positions=positions, beta=self.beta(),
                                normalize=True, **self.options)[:, :, None]

    def head_output(self, mixed):
        return self.head_norm(mixed)

    def maps(self, proj, rows=None):
        return threshold_attention_weights(proj.q[0], proj.k[0], beta=self.beta(), normalize=True, rows=rows,
                                           **self.options)


@register("rela")
class RectifiedLinearAttention(_Attention):
    """Rectified Linear Attention (Zhang, Titov, Sennrich 2021): relu(qkᵀ/√d)·v, no threshold, no q/k
    normalisation, then a gated RMSNorm over d_model (gate vector initialised to ones) before the output
    projection. Runs on the threshold kernel with β = 0, p = 1 and scale 1/√d."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.out_norm = GatedRMSNorm(self.n_embd, float(attn_cfg.get("norm_eps", 1e-5)))
        self.options = dict(beta=0.0, p=1.0, normalize=False, scale=1.0 / math.sqrt(self.head_dim))

    def mix(self, proj):
        return threshold_attention(proj.q[0], proj.k[0], proj.v, **self.options)

    def decode_mix(self, q, cache, positions):
        return threshold_decode(q[0][:, :, 0], cache.k[0], cache.v, positions=positions, **self.options)[:, :, None]

    def output(self, heads, x):
        return self.out_norm(_merge_heads(heads))

    def maps(self, proj, rows=None):
        return threshold_attention_weights(proj.q[0], proj.k[0], rows=rows, **self.options)


_RULES = {"sigmoid": SIGMOID_RULE, "softpick": SOFTPICK_RULE}


def _rule_decode(rule: str, q: torch.Tensor, cache: LayerCache, positions: torch.Tensor, scale: float,
                 bias: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """One decoding step of a blocked-attention map (sigmoid, softpick), exact, in PyTorch: the map's weights
    (the op's reference Rule, the forward's own formulas) over the whole cache, each row's positions after
    its query masked; float32 (float64 for float64 inputs) with autocast off. q (B, H, 1, d) -> (B, H, 1, dv)."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    k, v = cache.k[0], cache.v
    with torch.autocast(q.device.type, enabled=False):
        x = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * scale                     # (B, H, 1, L)
        keep = (torch.arange(k.shape[2], device=q.device)[None, :] <= positions[:, None])[:, None, None]
        w, _ = _RULES[rule].weights(x, keep, None if bias is None else bias.to(compute), eps)
        return (w @ v.to(compute)).to(q.dtype)


def _train_length(model_cfg, name: str) -> int:
    """model.seq_len, which sets the initial value of a length-dependent parameter (sigmoid, ssmax)."""
    length = int(model_cfg.seq_len)
    if length < 2:
        raise ValueError(f"attention '{name}' initialises from ln(model.seq_len): it needs model.seq_len >= 2, "
                         f"got {length}")
    return length


@register("sigmoid")
class SigmoidAttention(_Attention):
    """Sigmoid attention (Ramapuram et al. 2024): w_ij = σ(q_i·k_j/√d + b_h), no row normalisation and no
    output norm (SPEC §2). One learnable bias per head, initialised at −ln(model.seq_len) as the paper
    advises, so that a row of seq_len keys starts with weights summing to about one. Runs on the fused kernels
    (kernels/sigmoid/) for CUDA tensors, else on their exact blocked PyTorch reference."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        bias = -math.log(_train_length(model_cfg, attn_cfg.name))
        self.bias = nn.Parameter(torch.full((self.n_head,), bias))
        self.score_scale = 1.0 / math.sqrt(self.head_dim)

    def mix(self, proj):
        return sigmoid_attention(proj.q[0], proj.k[0], proj.v, self.bias, scale=self.score_scale)

    def decode_mix(self, q, cache, positions):
        return _rule_decode("sigmoid", q[0], cache, positions, self.score_scale, bias=self.bias)

    def maps(self, proj, rows=None):
        w = sigmoid_attention_weights(proj.q[0], proj.k[0], self.bias, scale=self.score_scale, rows=rows)
        return {"combined": w, "view1": w}

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"sigmoid_bias": self.bias}


@register("softpick")
class SoftpickAttention(_Attention):
    """Softpick (Zuhri et al. 2025): w_ij = relu(e^{x_ij} − 1) / (Σ_{j'≤i} |e^{x_ij'} − 1| + ε),
    x_ij = q_i·k_j/√d, in SPEC §2's overflow-safe form; no parameter of its own. ε (``attention.eps``)
    defaults to 1e-6, the value of the authors' training kernel (which adds it after the shift by the row
    maximum; SPEC adds ε in the unshifted formula, as here). Runs on the fused kernels (kernels/softpick/) for CUDA
    tensors, else on their exact blocked PyTorch reference."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.eps = float(attn_cfg.get("eps", 1e-6))
        if self.eps < 0:
            raise ValueError(f"attention.eps must be >= 0, got {self.eps}")
        self.score_scale = 1.0 / math.sqrt(self.head_dim)

    def mix(self, proj):
        return softpick_attention(proj.q[0], proj.k[0], proj.v, scale=self.score_scale, eps=self.eps)

    def decode_mix(self, q, cache, positions):
        return _rule_decode("softpick", q[0], cache, positions, self.score_scale, eps=self.eps)

    def maps(self, proj, rows=None):
        w = softpick_attention_weights(proj.q[0], proj.k[0], scale=self.score_scale, eps=self.eps, rows=rows)
        return {"combined": w, "view1": w}


@register("sink_softmax")
class SinkSoftmaxAttention(_Attention):
    """Softmax with a learnable attention sink (as in gpt-oss):
    w_ij = e^{x_ij} / (e^{s_h} + Σ_{j'≤i} e^{x_ij'}), x_ij = q_i·k_j/√d, one learnable logit s_h per head,
    initialised at 0 (where it is the "off-by-one" softmax), so a row's weights sum to less than one.
    Runs on the fused kernels (kernels/sink_softmax/) for CUDA tensors, else as one fused SDPA call with an extra
    sink key (kernels.sink_softmax_attention_reference): exact, with no T×T mask."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.sink = nn.Parameter(torch.zeros(self.n_head))

    def mix(self, proj):
        return sink_softmax_attention(proj.q[0], proj.k[0], proj.v, self.sink, scale=1.0 / math.sqrt(self.head_dim))

    def decode_mix(self, q, cache, positions):
        return softmax_decode(q[0][:, :, 0], cache.k[0], cache.v, positions=positions, sink=self.sink)[:, :, None]

    def maps(self, proj, rows=None):
        out = _softmax_maps(proj, self.head_dim, rows, sink=self.sink)
        out["combined"] = out["view1"]
        return out

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"sink_logit": self.sink}


@register("ssmax")
class ScalableSoftmaxAttention(_Attention):
    """Scalable-Softmax (Nakanishi 2025): w_ij = softmax_j(s_h · ln(i+1) · x_ij), x_ij = q_i·k_j/√d, i the
    query's absolute position (so i + 1 keys are visible; row 0 has one key and weight 1). One learnable
    s_h per head, initialised so that s_h · ln(model.seq_len) = 1 (plain softmax at the training length).
    Runs through torch's SDPA with each query row scaled by s_h · ln(i+1), the gradient reaching s_h
    through that product."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        length = _train_length(model_cfg, attn_cfg.name)
        self.scale = nn.Parameter(torch.full((self.n_head,), 1.0 / math.log(length)))

    def scaled_queries(self, proj: Projections) -> torch.Tensor:
        """q_i · s_h ln(i+1), (B, H, Tq, d), in float32 (float64 for float64 inputs); queries aligned to
        the end of the keys."""
        q = at_least_fp32(proj.q[0])
        Tq, Tk = q.shape[2], proj.k[0].shape[2]
        positions = torch.arange(Tk - Tq, Tk, device=q.device, dtype=q.dtype)
        factor = self.scale.to(q.dtype)[:, None] * torch.log1p(positions)   # (H, Tq)
        return q * factor[:, :, None]

    def mix(self, proj):
        return _sdpa(self.scaled_queries(proj).to(proj.q[0].dtype), proj.k[0], proj.v)

    def decode_mix(self, q, cache, positions):
        """The queries scaled by s_h ln(i + 1) at each row's own position i, as ``scaled_queries`` does."""
        row = at_least_fp32(q[0][:, :, 0])                                                  # (B, H, d)
        factor = self.scale.to(row.dtype)[None, :] * torch.log1p(positions.to(row.dtype))[:, None]  # (B, H)
        scaled = (row * factor[:, :, None]).to(q[0].dtype)
        return softmax_decode(scaled, cache.k[0], cache.v, positions=positions)[:, :, None]

    def maps(self, proj, rows=None):
        out = _softmax_maps(Projections([self.scaled_queries(proj)], proj.k, proj.v), self.head_dim, rows)
        out["combined"] = out["view1"]
        return out

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"ssmax_scale": self.scale}
