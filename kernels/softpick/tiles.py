"""Tile tables of the row-normalised Triton kernels (softpick, softmax with a sink; no autotuning: fixed tables,
first fitting candidate).

The forward carries FlashAttention's row state (shift, normaliser, rescaled accumulator); its 16-bit entries for heads
of 64 start from 128 query rows × 64 keys in one warpgroup (4 warps), which this kernel's own H200 sweep timed
fastest for softpick (BENCHMARKS.md, "Sink-free baselines' kernels"), ahead of the same tile in two warpgroups (8
warps), which holds the score tile, its exponentials and the accumulator in fewer registers per thread and stays
first for softmax with a sink. The
backward has the structure of the sigmoid and one-view threshold backward (k, v, dK, dV held per key block, five
products per tile pair), so it takes their tiles. ``python -m benchmarks.sink_free --sweep`` times the candidates.
"""
from __future__ import annotations

from ..score_ops.launch import TileConfig, tiles_by_width
from ..sigmoid.tiles import backward_configs, dq_configs  # noqa: F401  (the same structure, the same tiles)


def forward_configs(head_d: int, head_dv: int, elem_bytes: int, sink: bool = False) -> list[TileConfig]:
    """Candidates for the forward kernel, best first; ``sink``: softmax with a sink logit, whose forward (no
    rectification, one exponential per score) was fastest in two warpgroups in the same sweeps."""
    first = [TileConfig(128, 64, 8, 3), TileConfig(128, 64, 4, 3)]
    return tiles_by_width(
        head_d, head_dv, elem_bytes,
        fp32=[TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)],
        narrow=(first if sink else first[::-1]) + [TileConfig(128, 32, 4, 3), TileConfig(64, 64, 4, 3),
                                                   TileConfig(32, 32, 4, 1)],
        middle=[TileConfig(64, 64, 4, 3), TileConfig(128, 64, 8, 2), TileConfig(64, 64, 4, 2),
                TileConfig(32, 32, 4, 1)],
        wide=[TileConfig(128, 32, 8, 2), TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)])
