"""Recompute a checkpoint's exact attention weights, layer by layer and in blocks of query rows.

The probe never reads a fused kernel's output. It replays the model's residual stream: the embedding,
then for every block the block's own ``attn_norm`` → ``attn.project`` (q and k after RoPE, v) and the
block's forward to reach the next layer. The weights come from ``attn.maps(proj, rows)``, which every
attention variant computes in float32 from q and k. Rows are taken in blocks so that the weights held at
once (all views of one block) stay within ``max_bytes``; a map has shape (B, H, rows, keys), keys running
up to the last row's position.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import Projections

DEFAULT_MAX_BYTES = 256 * 2**20
COSINE_SCORES = ("tda", "tra")


@dataclass
class LayerProbe:
    """One layer's attention module, its normalised input x (B, T, d_model) and its projections."""

    layer: int
    attn: nn.Module
    x: torch.Tensor
    proj: Projections

    @property
    def views(self) -> int:
        return len(self.proj.q)

    @property
    def heads(self) -> int:
        """Heads of the attention maps (for the paired layout: the differential heads)."""
        return self.proj.q[0].shape[1]


def _check_tokens(model: nn.Module, idx: torch.Tensor) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"idx must be an integer tensor (batch, tokens), got {getattr(idx, 'shape', type(idx))}")
    if idx.shape[1] > model.max_seq_len:
        raise ValueError(f"a probe of {idx.shape[1]} tokens exceeds the model's max_seq_len={model.max_seq_len}")


@torch.no_grad()
def layers(model: nn.Module, idx: torch.Tensor) -> Iterator[LayerProbe]:
    """Each layer's probe, in order, for tokens idx (B, T); the residual stream is recomputed on the way."""
    _check_tokens(model, idx)
    positions = torch.arange(idx.shape[1], device=idx.device)
    x = model.embed(idx)
    for i, block in enumerate(model.blocks):
        normed = block.attn_norm(x)
        yield LayerProbe(i, block.attn, normed, block.attn.project(normed, positions))
        x = block(x, positions)


def rows_per_block(probe: LayerProbe, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Query rows per block so that the float32 maps of one block at the widest key range (every view,
    the combined map, and room for the metrics' temporaries: eight map-sized float32 equivalents, as
    float64 normalised weights take two) fit in ``max_bytes``; at least one row."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
    B, H, T, _ = probe.proj.q[0].shape
    maps_per_block = probe.views + 9
    per_row = B * H * T * 4 * maps_per_block
    return max(1, min(T, max_bytes // per_row))


@torch.no_grad()
def row_blocks(probe: LayerProbe, max_bytes: int = DEFAULT_MAX_BYTES
               ) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """(start, stop, maps) for consecutive blocks of query rows of one layer; maps as ``attn.maps``:
    {"combined", "view1"[, "view2"]}, each float32 (B, H, stop − start, stop)."""
    T = probe.proj.q[0].shape[2]
    step = rows_per_block(probe, max_bytes)
    for start in range(0, T, step):
        stop = min(T, start + step)
        yield start, stop, probe.attn.maps(probe.proj, rows=(start, stop))


@torch.no_grad()
def view_scores(probe: LayerProbe, start: int, stop: int) -> list[torch.Tensor]:
    """Each view's raw scores of query rows [start, stop) over keys [0, stop), float32
    (B, H, stop − start, stop), before any threshold, power or softmax: cosines q̂·k̂ for the threshold
    variants (TDA, TRA, which normalise q and k, SPEC §1), q·k for the others (their 1/√d is left out:
    it does not change a correlation). Entries j > i are not masked."""
    normalise = probe.attn.variant in COSINE_SCORES
    out = []
    for q, k in zip(probe.proj.q, probe.proj.k):
        q, k = q[:, :, start:stop].float(), k[:, :, :stop].float()
        if normalise:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out.append(q @ k.transpose(-1, -2))
    return out


@torch.no_grad()
def attention_maps(model: nn.Module, idx: torch.Tensor, layer: int,
                   rows: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """The exact weights of layer ``layer`` (0-based) for query rows [start, stop) (default: all) of
    tokens idx (B, T): {"combined", "view1"[, "view2"]}, each float32 (B, H, rows, keys up to stop)."""
    n_layer = len(model.blocks)
    if not 0 <= layer < n_layer:
        raise ValueError(f"layer must be in [0, {n_layer}), got {layer}")
    T = idx.shape[1]
    if rows is not None and not 0 <= rows[0] < rows[1] <= T:
        raise ValueError(f"rows must be (start, stop) with 0 <= start < stop <= {T}, got {rows}")
    probe = next(p for p in layers(model, idx) if p.layer == layer)
    return probe.attn.maps(probe.proj, rows=rows)
