"""The Differential Transformer (differential) and its paired head layout, which TDA shares."""
from __future__ import annotations

import math

import torch
from torch import nn

from kernels.decode import softmax_decode
from model.attention.base import Projections, _Attention, _sdpa, _softmax_maps, _split_heads, register
from model.norms import RMSNorm, at_least_fp32


def reparameterised_lambda(q1: torch.Tensor, k1: torch.Tensor, q2: torch.Tensor, k2: torch.Tensor,
                           init: float) -> torch.Tensor:
    """The Differential Transformer's λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init over the vectors' last dimension, in
    float32 (float64 for float64 vectors). The dots are products and sums, not ``@``, which autocast would compute in
    bf16."""
    q1, k1, q2, k2 = (at_least_fp32(t) for t in (q1, k1, q2, k2))
    return torch.exp((q1 * k1).sum(-1)) - torch.exp((q2 * k2).sum(-1)) + init


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
        return Projections.paired(q, k, v)


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
        return reparameterised_lambda(self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2, self.lambda_init)

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
