"""Host side of the one-view score ops' Gluon kernels (gluon_backward.py, and gluon_forward.py, taken
only when asked): whether inputs take them, their launches, and the hand-over to the Triton kernels when they cannot
run.

The sigmoid and the row-normalised launchers (kernels/sigmoid/launch.py, kernels/softpick/launch.py) call
``backward`` first; it says whether it ran: not where the inputs do not fit, nor when the kernel could not compile or
launch (nothing ran: a warning says so once and the Triton kernels run from then on). The parts are named
``gluon_bwd`` and ``dq_finish``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import common, gluon_support
from ..common import CompileTarget, cdiv
from .launch import LOG2E, finish_dq, run

MODES = {"softpick": 0, "sink": 1, "sigmoid": 2}  # gluon_backward's SOFTPICK, SINK, SIGMOID
_failure: list[str] = []  # why the backward failed to compile or launch here, once it has
# Per mode, the forward its launcher takes where the Gluon one fits: the Gluon kernel (True) or the Triton one (False).
# benchmarks.sink_free times each mode with the other one too (BENCHMARKS.md).
GLUON_FORWARD = dict.fromkeys(MODES, False)
_forward_failure: list[str] = []  # why the forward failed to compile or launch here, once it has


def gluon_backward_fits(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        target: Optional[CompileTarget] = None) -> bool:
    """gluon_support.fits for q, k, v and dO, while this kernel has not failed here."""
    return gluon_support.fits(target, _failure, q, k, v, q, k, v, do)


def default_tile(head_dv: int) -> tuple[int, int]:
    """(query rows per tile, stages of the query-side ring) for v's width: 64 rows up to dv = 64; 32 for dv = 128,
    where 64 rows spill registers (ptxas, sm_90)."""
    return (64, 2) if head_dv <= 64 else (32, 2)


def _flat_readable(t: torch.Tensor) -> torch.Tensor:
    """``t`` where the copy engine can read it as one flat vector (contiguous, 16-byte aligned), else a copy."""
    return t if t.is_contiguous() and t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format)


def backward(mode: str, do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dq: torch.Tensor,
             dk: torch.Tensor, dv: torch.Tensor, dq_acc: torch.Tensor, scale: float, causal: bool, *,
             param: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None,
             delta: Optional[torch.Tensor] = None, need_param_grad: bool = False,
             tile: Optional[tuple[int, int]] = None, target: Optional[CompileTarget] = None
             ) -> tuple[bool, Optional[torch.Tensor]]:
    """The whole backward of ``mode`` ("sigmoid", "softpick", "sink") on the Gluon kernel, where gluon_backward_fits:
    dk, dv written, dQ added into the zero-filled fp32 ``dq_acc`` (B, H, Tq, d) and finished into ``dq``.
    ``param``: the (H,) bias or sink logits; ``lse``, ``delta``: (B, H, Tq) fp32 L and Δ (the normalised modes).
    Returns (ran, the parameter's (H,) gradient or None); ran is False, with nothing written, where the kernel does
    not fit or could not compile or launch here (the caller's Triton kernels then run). A ``do`` the copy engine cannot
    read is copied once where everything else fits (gluon_support.readable_gradient)."""
    do = gluon_support.readable_gradient(do, target, _failure, q, k, v, q, k, v)
    if not gluon_backward_fits(do, q, k, v, target):
        return False, None
    from . import gluon_backward as gb

    B, H, Tq, d = q.shape
    Tk = k.shape[2]
    nb = cdiv(Tk, gb.BLOCK_N.value)
    parts = (common.new_output((B, H, gb.PARTIALS_PER_BLOCK.value * nb), torch.float32, q.device)
             if need_param_grad else None)
    block_m, stages = tile or default_tile(v.shape[-1])
    if q.is_cuda:
        common.bind_cuda_context(q.device)
    unused = dq_acc
    rows = [_flat_readable(unused if x is None else x) for x in (lse, delta)]
    # The loader copies L and Δ where Tq is a multiple of the tile's rows: every block then starts 16-byte aligned and
    # lies inside its head. At Tq = 3001 (starts not 16-byte aligned, blocks past a head's end) the copies faulted
    # on an H100 (an illegal instruction); elsewhere the warpgroups load them.
    rows_copied = mode != "sigmoid" and Tq % block_m == 0
    ins = gb.descriptors(q, k, v, do, *rows, block_m)
    dq_desc = gb.dq_descriptor(dq_acc, block_m)
    if not gluon_support.launched(_failure, "the Gluon backward of the score ops", lambda: run(
            "gluon_bwd", gb.score_backward_kernel, (nb * B * H,), (
                *ins, dq_desc, unused if param is None else param, *rows, dk, dv,
                unused if parts is None else parts, *dk.stride()[:3], *dv.stride()[:3], H, Tq, Tk, B * H, nb,
                float(scale) * LOG2E, float(scale)), dict(
                HEAD_D=d, HEAD_DV=v.shape[-1], MODE=MODES[mode], CAUSAL=causal, PARAM_GRAD=need_param_grad,
                BM=block_m, STAGES=stages, ROWS_COPIED=rows_copied, num_warps=gb.NUM_WARPS // 2,
                maxnreg=gb.MAX_REGISTERS), target)):
        return False, None
    finish_dq(dq_acc, dq, scale, target)
    return True, (parts.sum(dim=(0, 2)) if need_param_grad else None)


def gluon_forward_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       target: Optional[CompileTarget] = None) -> bool:
    """gluon_support.fits for q, k, v, while the forward has not failed here."""
    return gluon_support.fits(target, _forward_failure, q, k, v, q, k, v)


def forward(mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scale: float,
            causal: bool, *, param: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None,
            eps: float = 0.0, target: Optional[CompileTarget] = None) -> bool:
    """The forward of ``mode`` ("sigmoid", "softpick", "sink") on the Gluon kernel (gluon_forward.py), where
    gluon_forward_fits: ``out`` written, and in the normalised modes ``lse`` (B, H, Tq) fp32, L in log2 units.
    ``param``: the (H,) bias or sink logits; ``eps``: softpick's ε. Returns whether it ran: False, with nothing
    written, where it does not fit or could not compile or launch here (the caller's Triton forward then runs), or
    where a normalised mode has a scale ≤ 0 (the kernel takes the rows' maximum before scaling)."""
    if not gluon_forward_fits(q, k, v, target) or (mode != "sigmoid" and not scale > 0):
        return False
    from . import gluon_forward as gf

    B, H, Tq, d = q.shape
    if q.is_cuda:
        common.bind_cuda_context(q.device)
    return gluon_support.launched(_forward_failure, "the Gluon forward of the score ops", lambda: run(
        "gluon_fwd", gf.score_forward_kernel, (gf.grid(Tq, B, H),), (
            *gf.descriptors(q, k, v), out, out if lse is None else lse, out if param is None else param,
            *out.stride()[:3], H, Tq, k.shape[2], B * H, cdiv(Tq, gf.BLOCK_M.value), float(scale) * LOG2E,
            float(eps)), dict(
            HEAD_D=d, HEAD_DV=v.shape[-1], MODE=MODES[mode], CAUSAL=causal, STAGES=gf.STAGES,
            num_warps=gf.NUM_WARPS.value // 2, maxnreg=gf.MAX_REGISTERS), target))
