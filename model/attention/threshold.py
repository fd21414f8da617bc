"""The threshold variants on the fused kernels: TDA (paired heads, two thresholded views, λ), TRA (one view) and
ReLA, with TDA's β and λ parameterisations."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels import threshold_attention, threshold_attention_paired, threshold_attention_weights
from kernels.decode import threshold_decode
from model.attention.base import _Attention, _merge_heads, _split_heads, register
from model.attention.differential import _PairedHeads, reparameterised_lambda
from model.norms import GatedRMSNorm, RMSNorm, at_least_fp32


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
        return reparameterised_lambda(*self.vectors, self.init)


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
        if proj.paired_qk is not None:  # the paired layout's q and k whole: their gradients come back whole
            return threshold_attention_paired(*proj.paired_qk, proj.v, lam=self.lam(), beta=self.beta(), normalize=True,
                                              **self.options)
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
