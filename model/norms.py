"""Normalisation layers: RMSNorm with a pinned eps, and the gated RMSNorm of ReLA."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it already is (so float64 tests stay exact)."""
    return x if x.dtype == torch.float64 else x.float()


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x²) + eps) · gain over the last dimension, computed in float32.

    The eps is always explicit: ``F.rms_norm(eps=None)`` would pick the dtype's machine epsilon, which under
    bf16 autocast (7.8e-3) silently damps TDA's small raw outputs (SPEC §1).
    """

    def __init__(self, dim: int, eps: float, gain: bool = True):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else at_least_fp32(self.weight)
        return F.rms_norm(at_least_fp32(x), (x.shape[-1],), weight, self.eps).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """ReLA's output norm (Zhang et al. 2021): g ⊙ x·rsqrt(mean(x²) + eps) ⊙ sigmoid(w ⊙ x)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.gate = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * torch.sigmoid(self.gate * x)
