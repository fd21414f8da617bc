"""Tile tables of the sigmoid-attention Triton kernels (no autotuning: fixed tables, first fitting candidate).

The 16-bit entries for heads of 64 (d + dv ≤ 192 after padding) started from those of the one-view threshold kernel
(TRA) that were fastest in an H200 sweep (kernels/threshold/tiles.py): the kernels have TRA's structure, one product
with v and no row state, with a sigmoid where TRA has its threshold and square. The forward's first entry is the one
this kernel's own sweep timed fastest (64 × 64 in 4 warps; BENCHMARKS.md, "Sink-free forwards' tiles re-chosen").
The wider entries follow the threshold kernels' choices by the compiler's register reports.
``python -m benchmarks.sink_free --sweep`` times the candidates.
"""
from __future__ import annotations

from ..score_ops.launch import TileConfig, tiles_by_width


def forward_configs(head_d: int, head_dv: int, elem_bytes: int) -> list[TileConfig]:
    """Candidates for the forward kernel, best first."""
    return tiles_by_width(
        head_d, head_dv, elem_bytes,
        fp32=[TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)],
        narrow=[TileConfig(64, 64, 4, 3), TileConfig(128, 32, 4, 3), TileConfig(32, 32, 4, 1)],
        middle=[TileConfig(64, 64, 4, 3), TileConfig(128, 64, 8, 2), TileConfig(64, 64, 4, 2),
                TileConfig(32, 32, 4, 1)],
        wide=[TileConfig(128, 32, 8, 2), TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)])


def backward_configs(head_d: int, head_dv: int, elem_bytes: int) -> list[TileConfig]:
    """Candidates for the key-block dK/dV kernel (block_n keys held, block_m query rows streamed), best first."""
    return tiles_by_width(
        head_d, head_dv, elem_bytes,
        fp32=[TileConfig(32, 64, 4, 1), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)],
        narrow=[TileConfig(64, 64, 4, 3), TileConfig(64, 64, 4, 2), TileConfig(32, 64, 4, 1),
                TileConfig(32, 32, 4, 1)],
        middle=[TileConfig(32, 64, 8, 2), TileConfig(32, 64, 4, 1), TileConfig(32, 32, 4, 1)],
        wide=[TileConfig(32, 64, 8, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)])


def dq_configs(head_d: int, head_dv: int, elem_bytes: int) -> list[TileConfig]:
    """Candidates for the atomic-free dQ kernel (the deterministic path), best first."""
    return tiles_by_width(
        head_d, head_dv, elem_bytes,
        fp32=[TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)],
        narrow=[TileConfig(128, 64, 8, 3), TileConfig(64, 64, 4, 3), TileConfig(64, 32, 4, 2),
                TileConfig(32, 32, 4, 1)],
        middle=[TileConfig(128, 64, 8, 3), TileConfig(64, 64, 4, 3), TileConfig(64, 32, 4, 2),
                TileConfig(32, 32, 4, 1)],
        wide=[TileConfig(64, 64, 8, 2), TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)])


def sigmoid_mode(elem_bytes: int) -> int:
    """How the kernels evaluate σ (triton_forward.sigmoid_exp2): one ex2, then 1/(1 + t) on the FMA units by a
    degree-4 polynomial, alone for 16-bit inputs (relative error ≤ 3.0e-4, well below the rounding of the weights to
    16 bits before the product with v) and with one Newton step for fp32 (rounding-limited); 0 would divide (a second
    special-function operation per score)."""
    return 2 if elem_bytes == 4 else 1
