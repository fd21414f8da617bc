"""Naive, fully materialised float64 implementations of SPEC's attention maps for the model tests (the
threshold map itself is the kernels tests' ``naive_maps``)."""
from __future__ import annotations

import math

import torch

from tests.threshold_float64 import naive_maps


def causal_keep(Tq: int, Tk: int) -> torch.Tensor:
    """(Tq, Tk) True where key j is visible to query i; queries aligned to the end of the keys."""
    i = torch.arange(Tq)[:, None] + (Tk - Tq)
    return torch.arange(Tk)[None, :] <= i


def threshold_map(q, k, beta, p, normalize=True, scale=1.0):
    """relu(scale·q̂k̂ᵀ − τ_i)^p over (B, H, Tq, Tk), causal; beta a float or (H,) values."""
    beta = torch.as_tensor(beta, dtype=torch.float64).reshape(-1).expand(q.shape[1])
    return naive_maps(q.double(), k.double(), beta, p, normalize, scale, causal=True)[0]


def softmax_map(q, k):
    q, k = q.double(), k.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    keep = causal_keep(q.shape[2], k.shape[2])
    return scores.masked_fill(~keep, float("-inf")).softmax(-1)


def rms_norm(x, gain, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def scores(q, k):
    """x_ij = q_i·k_j/√d in float64, (B, H, Tq, Tk), and the causal mask (Tq, Tk)."""
    q, k = q.double(), k.double()
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), causal_keep(q.shape[2], k.shape[2])


def per_head(values):
    """(H,) values shaped to broadcast over (B, H, Tq, Tk)."""
    return values.double()[:, None, None]


def sigmoid_map(q, k, bias):
    """σ(x_ij + b_h) on causal entries, 0 elsewhere."""
    x, keep = scores(q, k)
    return torch.sigmoid(x + per_head(bias)) * keep


def softpick_map(q, k, eps):
    """relu(e^x − 1) / (Σ_{j ≤ i} |e^x − 1| + ε), written as the formula (no shift)."""
    x, keep = scores(q, k)
    u = (torch.exp(x) - 1) * keep
    return torch.relu(u) / (u.abs().sum(-1, keepdim=True) + eps)


def sink_softmax_map(q, k, sink):
    """e^x_ij / (e^s_h + Σ_{j ≤ i} e^x_ij'), written as the formula (no shift)."""
    x, keep = scores(q, k)
    e = torch.exp(x) * keep
    return e / (torch.exp(per_head(sink)) + e.sum(-1, keepdim=True))


def ssmax_map(q, k, scale):
    """softmax_j(s_h ln(i+1) x_ij) over j ≤ i, i the absolute position (queries aligned to the end)."""
    x, keep = scores(q, k)
    positions = torch.arange(q.shape[2], dtype=torch.float64) + k.shape[2] - q.shape[2]
    return (per_head(scale) * torch.log(positions + 1)[:, None] * x).masked_fill(~keep, float("-inf")).softmax(-1)
