"""Tile sizes for the threshold-attention Triton kernels, chosen per head dimensions and dtype, and the backward's
split of work (``BackwardPlan``).

No autotuning: the choice is a fixed table, so a training run never pays autotuning and every run uses the same
tiles. The bf16/fp16 entries for 64-wide heads (paired TDA, TRA) are the fastest of H200 sweeps
(`python -m benchmarks.attention --sweep`; README.md in this folder says which, BENCHMARKS.md has the numbers); the
others were picked from the compiler's register and spill reports (`python -m benchmarks.registers`) and have not
been timed. A tile that does not fit the GPU's shared memory is skipped for the next candidate at launch
(launch.py). Under Triton's interpreter small tiles keep the CPU tests quick while still crossing block borders.
"""

from dataclasses import dataclass
from typing import Optional

from ..common import padded


@dataclass(frozen=True)
class TileConfig:
    """block_m query rows x block_n keys per tile; num_warps and num_stages as in Triton.
    query_major (dK/dV kernel only) lays score tiles out (queries, keys) instead of (keys, queries); tma
    reads q, k, v (and dO) through tensor descriptors (Hopper's copy engine) where their strides allow;
    skip_empty skips the products of tiles where no weight survives (in either view)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    query_major: bool = False
    tma: bool = False
    skip_empty: bool = False

    def describe(self) -> str:
        """'64×64, 4 warps, 3 stages' and the options that are on, for tables and logs."""
        options = [name for name, on in (("query-major", self.query_major), ("TMA", self.tma),
                                         ("skip-empty", self.skip_empty)) if on]
        return ", ".join([f"{self.block_m}×{self.block_n}, {self.num_warps} warps, {self.num_stages} stages",
                          *options])


INTERPRETER_CONFIG = TileConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)


@dataclass(frozen=True)
class BackwardPlan:
    """How launch.backward splits its work, and with which tiles; a field left None takes the default below.

    fused: two views take the fused Gluon kernel where it fits (fused_paired_backward); then the Triton kernels'
        fields do not apply.
    atomic_dq: the Triton dK/dV kernel accumulates dQ with atomics (dq_atomic), rather than the dQ kernel computing it.
    dv_apart: with dQ by atomics, dV is computed in a launch of its own (dv_pass_apart).
    dkdv_tile, dq_tile, dv_tile: the tile of the dK/dV kernel, of the dQ kernel and of the dV launch, instead of
        the first candidate that fits (backward_configs, dq_configs, dv_configs).
    skip: with the forward's record given, visit only the tiles it marks (default: backward_skips); False visits
        every tile of the causal range.
    The deterministic mode overrides fused and atomic_dq: it takes the dQ kernel.
    """

    fused: Optional[bool] = None
    atomic_dq: Optional[bool] = None
    dv_apart: Optional[bool] = None
    dkdv_tile: Optional[TileConfig] = None
    dq_tile: Optional[TileConfig] = None
    dv_tile: Optional[TileConfig] = None
    skip: Optional[bool] = None


def skip_empty_tiles() -> bool:
    """Whether the forward records which 64 x 64 cells hold a surviving weight (triton_lists.py) and the backward, on
    every path, visits only the tiles that overlap one, skipping the others whole (scores, products, atomics). Exact:
    a skipped tile's weights and slopes are all zero (README.md in this folder, "Exact skipping"). Off only for A/B
    timing: ``threshold_attention_triton(..., skip_empty=False)``, ``launch.forward(record=False)``,
    ``BackwardPlan(skip=False)``."""
    return True


def skipping(asked: Optional[bool]) -> bool:
    """A call's ``skip_empty`` (or launch.forward's record / skip_products) as asked, or skip_empty_tiles() for None."""
    return skip_empty_tiles() if asked is None else bool(asked)


def backward_skips(fused: bool) -> bool:
    """Whether the backward, given the forward's record, visits only the tiles it marks: the fused Gluon kernel
    (whose loader and warpgroups read the list one tile ahead) and the Triton kernels (an index loaded per step of
    their loops, which Triton pipelines less deep than a loop over a range: with every tile occupied that is the
    whole difference, which ``python -m benchmarks.attention --dense`` times)."""
    return True


def forward_skips_products(gluon: bool) -> bool:
    """Whether the forward, with skipping on, also leaves out the product with v (and the weights) of tiles without a
    survivor: the Gluon forward per warpgroup of 64 rows, by a branch outside any software pipeline; not the Triton
    forward, where that branch in the key loop keeps Triton from pipelining it and cost 32% on inputs whose tiles are
    nearly all occupied (BENCHMARKS.md, "The staged variants timed"; ``TileConfig.skip_empty`` still asks for it)."""
    return gluon


# fp32 with wide heads (views x d + dv above 256 after padding): every tile spills (16 x 16 too), and the larger
# ones also asked for more shared memory than an H200 has and took minutes to compile for sm_90, only to be refused
# at launch; 16 x 16 compiles in seconds and fits (BENCHMARKS.md, "Wide fp32 heads, host time, the table again").
# Not timed.
FP32_WIDE = [TileConfig(16, 16, 4, 1)]


def _fp32(width: int, tiles: list[TileConfig]) -> list[TileConfig]:
    """fp32 candidates: ``tiles``, or FP32_WIDE when the padded width views x d + dv is above 256."""
    return FP32_WIDE if width > 256 else tiles


def forward_configs(head_d: int, head_dv: int, two_views: bool, elem_bytes: int) -> list[TileConfig]:
    """Candidates for the forward kernel, best first."""
    d, dv = padded(head_d), padded(head_dv)
    width = (2 if two_views else 1) * d + dv
    if elem_bytes == 4:
        return _fp32(width, [TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)])
    if width <= 192:
        return [TileConfig(128, 32, 4, 3), TileConfig(64, 64, 4, 3), TileConfig(32, 32, 4, 1)]
    if width <= 384:
        return [TileConfig(64, 64, 4, 3), TileConfig(128, 64, 8, 2), TileConfig(64, 64, 4, 2),
                TileConfig(32, 32, 4, 1)]
    return [TileConfig(128, 32, 8, 2), TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1),
            TileConfig(16, 16, 4, 1)]


def dq_configs(head_d: int, head_dv: int, two_views: bool, elem_bytes: int) -> list[TileConfig]:
    """Candidates for the query-block-parallel dQ kernel, best first."""
    d, dv = padded(head_d), padded(head_dv)
    width = (2 if two_views else 1) * d + dv
    if elem_bytes == 4:
        return _fp32(width, [TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)])
    if width <= 384:
        return [TileConfig(128, 64, 8, 3), TileConfig(64, 64, 4, 3), TileConfig(64, 32, 4, 2),
                TileConfig(32, 32, 4, 1)]
    return [TileConfig(64, 64, 8, 2), TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1),
            TileConfig(16, 16, 4, 1)]


def dq_atomic(two_views: bool) -> bool:
    """Whether the non-deterministic backward accumulates dQ with fp32 atomics inside the dK/dV
    kernel (8 products per tile pair for TDA) rather than in the dQ kernel, which recomputes the
    scores and dA (11 products) but needs no atomics and fewer registers."""
    return not two_views


def dv_pass_apart(two_views: bool) -> bool:
    """Whether the backward with dQ by atomics computes dV in a launch of its own (q·k scores and W only,
    no dA), leaving the dK launch without the dV accumulator (half of the registers that the two-view
    dK/dV kernel holds). Off: it ran slower than the default (BENCHMARKS.md, "The staged variants timed")."""
    return False


def fused_paired_backward(head_d: int, head_dv: int) -> bool:
    """Whether two views take the fused Gluon backward (gluon_backward.py) where it fits (launch.gluon_backward_fits):
    it ran the paired backward faster than the Triton dK/dV + dQ kernels (BENCHMARKS.md, "The fused backward's
    warpgroups as partitions")."""
    return True


def dv_configs(head_d: int, head_dv: int, two_views: bool, elem_bytes: int) -> list[TileConfig]:
    """Candidates for the dV-only launch of the key-block kernel (see dv_pass_apart), best first by
    registers and spills as compiled for sm_90 (python -m benchmarks.registers); not timed on their own."""
    if elem_bytes == 4:
        return [TileConfig(32, 64, 4, 1), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)]
    return [TileConfig(64, 128, 8, 2), TileConfig(32, 128, 8, 3), TileConfig(32, 64, 4, 1), TileConfig(32, 32, 4, 1)]


def backward_configs(head_d: int, head_dv: int, two_views: bool, elem_bytes: int) -> list[TileConfig]:
    """Candidates for the key-block-parallel dK/dV kernel, best first (block_n keys held, block_m
    query rows streamed)."""
    d, dv = padded(head_d), padded(head_dv)
    width = (2 if two_views else 1) * d + dv
    if elem_bytes == 4:
        return _fp32(width, [TileConfig(32, 64, 4, 1), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)])
    if width <= 192 and not two_views:
        # one view of 64: (queries, keys) tiles, faster than key-major (BENCHMARKS.md, "Query-major dK/dV tiles")
        return [TileConfig(64, 64, 4, 3, query_major=True), TileConfig(64, 64, 4, 2), TileConfig(32, 64, 4, 1),
                TileConfig(32, 32, 4, 1)]
    if width <= 192:
        return [TileConfig(64, 64, 4, 3), TileConfig(64, 64, 4, 2), TileConfig(32, 64, 4, 1),
                TileConfig(32, 32, 4, 1)]
    if width <= 384:
        # paired TDA: q/k/v/dO through tensor descriptors, faster than by pointers (BENCHMARKS.md, "The staged
        # variants timed"); inputs a descriptor cannot take use pointers
        return [TileConfig(32, 128, 8, 3, tma=True), TileConfig(32, 64, 8, 2), TileConfig(32, 64, 4, 1),
                TileConfig(32, 32, 4, 1)]
    return [TileConfig(32, 64, 8, 2), TileConfig(32, 32, 4, 1), TileConfig(16, 16, 4, 1)]
