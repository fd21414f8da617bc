"""Exact PyTorch sigmoid attention (SPEC §2), blocked over query rows with a recomputing backward
(kernels/score_ops/blocked.py): what runs where the Triton kernels do not, and what they are checked against.

    w_ij = σ(x_ij + b_h),  x_ij = scale · q_i·k_j,  j ≤ i + Tk − Tq (causal)
    dX = dW ⊙ w ⊙ (1 − w),  ∂L/∂b_h = Σ_{b,i,j} dX
"""
from __future__ import annotations

from typing import Optional

import torch

from ..score_ops.blocked import Rule, blocked_attention, blocked_weights


def _weights(x: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor, eps: float):
    """σ(x + b_h) on visible entries, 0 elsewhere; the weights are their own saved state."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    w = torch.where(keep, torch.sigmoid(x + bias[:, None, None]), zero)
    return w, None


def _score_grad(dw: torch.Tensor, w: torch.Tensor, saved: None):
    dx = dw * w * (1.0 - w)
    return dx, dx.sum(dim=(0, 2, 3))


RULE = Rule("sigmoid", _weights, _score_grad, has_param=True)


def sigmoid_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: float | torch.Tensor, *,
                                scale: Optional[float] = None, causal: bool = True) -> torch.Tensor:
    """o_i = Σ_j σ(scale·q_i·k_j + b_h) v_j. q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv); bias a float,
    0-d or (H,) tensor (gets its gradient); scale 1/√d by default. Returns (B, H, Tq, dv) in q's dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return blocked_attention(RULE, q, k, v, scale=scale, param=bias, causal=causal)


def sigmoid_attention_weights(q: torch.Tensor, k: torch.Tensor, bias: float | torch.Tensor, *,
                              scale: Optional[float] = None, causal: bool = True,
                              rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The weights σ(x + b_h) of query rows ``rows`` (default: all), (B, H, rows, keys), float32 (float64 for
    float64 inputs), without gradient (kernels.score_ops.blocked.blocked_weights)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return blocked_weights(RULE, q, k, scale=scale, param=bias, causal=causal, rows=rows)
