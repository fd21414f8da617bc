"""Rotary position embeddings (RoPE), computed on the fly from absolute positions.

Positions are (T,), shared by every row of a batch, or (B, T), one set per row (decoding a batch of sequences of
different lengths). NTK-aware scaling (for evaluation beyond the training length) raises the base:
base' = base · factor^(d / (d − 2)), which stretches the low frequencies by about ``factor`` and leaves
the highest ones nearly unchanged.
"""
from __future__ import annotations

import torch


def rope_frequencies(head_dim: int, base: float, ntk_factor: float = 1.0, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) in float32."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    if ntk_factor != 1.0:
        base = base * ntk_factor ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return base ** (-exponents)


@torch.library.custom_op("gpt_rope::rotation_table", mutates_args=())
def rotation_table(positions: torch.Tensor, head_dim: int, base: float, ntk_factor: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin of the angles at ``positions``: (*positions.shape, head_dim // 2) each.

    An operator of its own so that torch.compile cannot see inside it: inductor would otherwise fuse the angles'
    power, cosine and sine into every kernel that reads them, recomputing them for each of the batch × heads
    elements that share one position, in the forward and again in the backward (what that cost: BENCHMARKS.md,
    "Training throughput"). As an opaque call its (T, d/2) result is computed once and read."""
    angles = positions.to(torch.float32)[..., None] * rope_frequencies(head_dim, base, ntk_factor, positions.device)
    return angles.cos(), angles.sin()


@rotation_table.register_fake
def _rotation_table_shape(positions, head_dim, base, ntk_factor):
    shape = (*positions.shape, head_dim // 2)
    return positions.new_empty(shape, dtype=torch.float32), positions.new_empty(shape, dtype=torch.float32)


_last_rotation: list = []  # [(positions, head_dim, base, ntk_factor, dtype), (cos, sin)] of the latest call


def rope_rotation(positions: torch.Tensor, head_dim: int, base: float, ntk_factor: float = 1.0,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of the rotation at ``positions`` in ``dtype``: (T, 1, d/2) for positions (T,), (B, T, 1, d/2) for
    positions (B, T), so that they broadcast over the (B, T, H, d/2) halves ``rotate`` works on; they rotate q and k
    alike.

    The latest result is kept and given again for the same ``positions`` tensor (the very object, which a model's
    forward hands every layer) and the same settings: every layer after the first reuses it, which matters when
    decoding one token, where these small kernels are a good part of a step (not while torch.compile traces)."""
    key = (positions, head_dim, float(base), float(ntk_factor), dtype)
    tracing = torch.compiler.is_compiling()
    if not tracing and _last_rotation and _last_rotation[0][0] is positions and _last_rotation[0][1:] == key[1:]:
        return _last_rotation[1]
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    cos, sin = rotation_table(positions, head_dim, float(base), float(ntk_factor))
    rotation = cos.unsqueeze(-2).to(dtype), sin.unsqueeze(-2).to(dtype)
    if not tracing:
        _last_rotation[:] = [key, rotation]
    return rotation


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, d) rotated by ``rope_rotation``'s (cos, sin), pairing channel c with c + d/2 (GPT-NeoX layout).

    Computed on x's (B, T, H, d) view and returned as its transpose, so that a projection split into heads (a
    (B, T, H, d) tensor viewed as (B, H, T, d)) keeps that layout: torch.cat makes its output contiguous in its own
    dimensions, which in (B, H, T, d) would record one layout in eager mode while inductor writes the rotation in the
    projection's, and a custom op that takes exact strides (the threshold kernels) then gets a copy of each input."""
    d = x.shape[-1]
    xt = x.transpose(1, 2)
    x1, x2 = xt[..., : d // 2], xt[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).transpose(1, 2)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float, ntk_factor: float = 1.0) -> torch.Tensor:
    """Rotate x (B, H, T, d) by its positions, (T,) or (B, T)."""
    return rotate(x, *rope_rotation(positions, x.shape[-1], base, ntk_factor, x.dtype))
