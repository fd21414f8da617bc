"""Naive, fully materialised float64 implementations of SPEC's attention maps, for tests only."""
from __future__ import annotations

import math

import torch


def causal_keep(Tq: int, Tk: int) -> torch.Tensor:
    """(Tq, Tk) True where key j is visible to query i; queries aligned to the end of the keys."""
    i = torch.arange(Tq)[:, None] + (Tk - Tq)
    return torch.arange(Tk)[None, :] <= i


def threshold_map(q, k, beta, p, normalize=True, scale=1.0):
    """relu(scale·q̂k̂ᵀ − τ_i)^p over (B, H, Tq, Tk), τ_i = β sqrt(2 ln(pos_i + 1)/d); beta float or (H,)."""
    q, k = q.double(), k.double()
    if normalize:
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    Tq, Tk, d = q.shape[2], k.shape[2], q.shape[-1]
    pos = torch.arange(Tq, dtype=torch.float64) + (Tk - Tq)
    beta = torch.as_tensor(beta, dtype=torch.float64).reshape(-1, 1, 1)  # (H or 1, 1, 1)
    tau = beta * torch.sqrt(2 * torch.log(pos + 1) / d)[None, :, None]
    u = (q @ k.transpose(-1, -2)) * scale - tau
    u = torch.where(causal_keep(Tq, Tk) & (u > 0), u, torch.zeros((), dtype=torch.float64))
    return u ** p


def softmax_map(q, k):
    q, k = q.double(), k.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    keep = causal_keep(q.shape[2], k.shape[2])
    return scores.masked_fill(~keep, float("-inf")).softmax(-1)


def rms_norm(x, gain, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain
