"""What the one-view score ops (kernels/sigmoid/, kernels/softpick/, kernels/sink_softmax/) share on the host: their
input check (q, k, v, scale, causal; the checks every op shares are in kernels/inputs.py), the tile type and the
launch that falls back to the next tile when one does not fit the GPU's shared memory.

This module imports Triton only to launch.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from .. import common
from ..common import CompileTarget, cdiv, interpreting
from ..inputs import check_attention_tensors, check_head_dims, check_number

LOG2E = 1.4426950408889634


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float], causal: bool) -> None:
    """Raise TypeError/ValueError naming the argument unless q, k, v, scale (None: the default 1/√d), causal are a
    supported case (kernels.inputs: the shapes, dtypes and devices every op takes)."""
    check_attention_tensors([("q", q), ("k", k), ("v", v)], "the kernels package's dispatchers fall back to the "
                            "exact PyTorch implementation")
    check_head_dims("q", q.shape[3], v.shape[3])
    if scale is not None:
        check_number(scale, "scale")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """block_m query rows × block_n keys per tile; num_warps and num_stages as in Triton."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def describe(self) -> str:
        return f"{self.block_m}×{self.block_n}, {self.num_warps} warps, {self.num_stages} stages"


# Under the interpreter: blocks small enough that the tests' lengths (up to a few hundred) cross several of them.
INTERPRETER_TILE = TileConfig(32, 32, 4, 1)


def compute_constexprs(dtype: torch.dtype) -> dict:
    """CAST_F32: tiles are cast to fp32 after loading (fp32 inputs, and the interpreter, whose bf16 arithmetic is
    wrong); DOT_PREC: fp32 products are exact ("ieee"), never tf32."""
    cast = interpreting() or dtype == torch.float32
    return dict(CAST_F32=cast, DOT_PREC="ieee" if cast else "tf32")


def run(part: str, kernel, grid: tuple, args: tuple, kwargs: dict, target: Optional[CompileTarget]) -> object:
    """``kernel[grid](*args, **kwargs)`` through kernels.fast_launch, or only compiled for ``target`` (kept as
    ``target.compiled[part]``)."""
    if target is not None:
        return target.compile(part, kernel, grid, args, kwargs)
    from .. import fast_launch

    return fast_launch.launch(kernel, grid, args, kwargs)


def finish_dq(dq_acc: torch.Tensor, dq: torch.Tensor, scale: float, target: Optional[CompileTarget]) -> None:
    """dq = scale · the fp32 buffer (B, H, Tq, d) the backward kernels added dQ/scale into (the Triton dK/dV kernels by
    atomics, the Gluon backward by the copy engine), cast and written in q's layout
    (score_ops.triton_tiles.dq_finish_kernel)."""
    from ..common import padded
    from .triton_tiles import dq_finish_kernel

    B, H, Tq, d = dq_acc.shape
    block = 32 if interpreting() else 64
    nm = cdiv(Tq, block)
    run("dq_finish", dq_finish_kernel, (B * H * nm,), (dq_acc, dq, *dq.stride()[:3], H, Tq, nm, float(scale)),
        dict(HEAD_D=d, BLOCK_M=block, BLOCK_D=padded(d)), target)


def launch_tiled(part: str, kernel, grid: Callable[[TileConfig], tuple], args_for: Callable[[TileConfig], tuple],
                 candidates: list[TileConfig], constexprs: dict, tile: Optional[TileConfig],
                 target: Optional[CompileTarget], chosen: dict, key: tuple) -> TileConfig:
    """Launch ``kernel`` at ``tile``, else the remembered or first candidate that fits the GPU's shared memory (under
    the interpreter, INTERPRETER_TILE; with a ``target``, the first candidate, nothing remembered). ``grid`` and
    ``args_for`` build the grid and the runtime arguments for a tile. Returns the tile launched."""

    def one(cfg: TileConfig) -> None:
        run(part, kernel, grid(cfg), args_for(cfg), dict(
            constexprs, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
            target)
    return common.first_fitting(candidates, one, tile=tile, target=target, chosen=chosen, key=key,
                                interpreter_tile=INTERPRETER_TILE)[0]


def tiles_by_width(head_d: int, head_dv: int, elem_bytes: int, *, fp32: list[TileConfig],
                   narrow: list[TileConfig], middle: list[TileConfig], wide: list[TileConfig]) -> list[TileConfig]:
    """Pick a tile table by the padded width d + dv of a tile row: fp32 (16×16 above 256, where every tile spills),
    16-bit up to 192 (``narrow``: heads of 64), up to 384 (``middle``), above (``wide``)."""
    from ..common import padded

    width = padded(head_d) + padded(head_dv)
    if elem_bytes == 4:
        return [TileConfig(16, 16, 4, 1)] if width > 256 else fp32
    if width <= 192:
        return narrow
    return middle if width <= 384 else wide
