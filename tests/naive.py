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
