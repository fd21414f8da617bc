"""Exact PyTorch softpick attention (SPEC §2), blocked over query rows with a recomputing backward
(kernels/score_ops/blocked.py): what runs where the Triton kernels do not, and what they are checked against.

    u_ij = e^{x_ij} − 1,  N_i = Σ_{j visible} |u_ij| + ε,  w_ij = relu(u_ij) / N_i,  x_ij = scale · q_i·k_j

computed in SPEC's overflow-safe form with a shift m (any shift is exact). The gradient, from ∂w_j/∂x_k =
δ_jk 1[u_j > 0] e^{x_j} / N − relu(u_j) sign(u_k) e^{x_k} / N²:

    dX_ij = (e^{x_ij} / N_i) · (dW_ij · 1[u_ij > 0] − sign(u_ij) · Δ_i),   Δ_i = Σ_j dW_ij w_ij = dO_i · o_i
"""
from __future__ import annotations

from typing import Optional

import torch

from ..score_ops.blocked import Rule, blocked_attention, blocked_weights


def _weights(x: torch.Tensor, keep: torch.Tensor, param: None, eps: float):
    """relu(e^x − 1) / (Σ_j |e^x_j − 1| + ε) over visible entries, as relu(e^{x−m} − e^{−m}) / (Σ_j |e^{x_j−m} −
    e^{−m}| + ε e^{−m}). m = max(row max, 0) keeps both e^{x−m} and e^{−m} at most 1, so no intermediate is infinite
    (with the row maximum alone, e^{−m} overflows for a row of very negative scores). Saved for the gradient: e^{x−m},
    D e^{−m} (their ratio is e^x / N) and the scores x, whose sign picks the gradient's branch: u = e^{x−m} − e^{−m}
    has that sign too, but rounds to 0 for |x| below float32's resolution of e^{−m}, where the gradient is not 0
    (the kernels take the sign from the scores as well)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = x.masked_fill(~keep, float("-inf"))
    m = x.amax(dim=-1, keepdim=True).clamp_min(0.0)   # every row sees a key, so the max is finite
    e_m = torch.exp(-m)
    e = torch.exp(x - m)                               # 0 on masked entries
    u = torch.where(keep, e - e_m, zero)
    denominator = u.abs().sum(dim=-1, keepdim=True) + eps * e_m
    return u.clamp_min(0.0) / denominator, (e, denominator, x)


def _score_grad(dw: torch.Tensor, w: torch.Tensor, saved):
    e, denominator, x = saved   # x is −inf where masked, and e is 0 there
    delta = (dw * w).sum(dim=-1, keepdim=True)
    return e / denominator * (dw * (x > 0) - torch.sign(x) * delta), None


RULE = Rule("softpick", _weights, _score_grad, has_param=False)


def softpick_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                                 eps: float = 1e-6, causal: bool = True) -> torch.Tensor:
    """o_i = Σ_j w_ij v_j with softpick weights. q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv); scale
    1/√d by default; eps ≥ 0 in the denominator. Returns (B, H, Tq, dv) in q's dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return blocked_attention(RULE, q, k, v, scale=scale, eps=eps, causal=causal)


def softpick_attention_weights(q: torch.Tensor, k: torch.Tensor, *, scale: Optional[float] = None, eps: float = 1e-6,
                               causal: bool = True, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The softpick weights of query rows ``rows`` (default: all), (B, H, rows, keys), float32 (float64 for float64
    inputs), without gradient (kernels.score_ops.blocked.blocked_weights)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return blocked_weights(RULE, q, k, scale=scale, eps=eps, causal=causal, rows=rows)
