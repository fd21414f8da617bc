"""The launchers as ``torch.library`` custom ops, so ``torch.compile`` of a model treats the forward and the backward
each as one opaque call (with a shape-only fake implementation) instead of breaking the graph.

Custom ops take plain values, so the schemas list ThresholdOptions' fields where the launchers take the object; both
are built from ThresholdOptions (OPTIONS below), and ``ThresholdOptions(*values)`` turns the values back.
``tda_kernels::threshold_attention_fwd`` returns (out, rq1, rk1, rq2, rk2, rec): the inverse norms that the backward
reuses (empty tensors where they do not apply) and, with ``record``, the record of the tiles holding a surviving weight
(triton_lists.py; an empty uint8 tensor without), which the backward takes and visits only those tiles of; it is an
output, not state, so it survives torch.compile and CUDA graphs (nothing on the host reads it). ``skip`` lets the
forward leave out the products of empty tiles (tiles.forward_skips_products).
``tda_kernels::threshold_attention_bwd`` returns (dq1, dk1, dv, dq2, dk2, dlam, dbeta) with empty tensors for
gradients not asked for.
"""

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from .. import common
from . import launch
from .options import ThresholdOptions
from .triton_lists import record_shape

_SCHEMA_TYPES = {float: "float", bool: "bool", int: "int"}
OPTIONS = ", ".join(f"{_SCHEMA_TYPES[f.type]} {f.name}" for f in dataclasses.fields(ThresholdOptions))
_N_OPTIONS = len(dataclasses.fields(ThresholdOptions))
_FWD_SCHEMA = (f"(Tensor q1, Tensor k1, Tensor v, Tensor? q2, Tensor? k2, Tensor? lam, Tensor beta, {OPTIONS}, "
               "bool record, bool skip) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_BWD_SCHEMA = (f"(Tensor do, Tensor q1, Tensor k1, Tensor v, Tensor? q2, Tensor? k2, Tensor rq1, Tensor rk1, "
               f"Tensor rq2, Tensor rk2, Tensor rec, Tensor? lam, Tensor beta, {OPTIONS}, bool need_dlam, "
               "bool need_dbeta, bool deterministic) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.float32)


@torch.library.custom_op("tda_kernels::threshold_attention_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def threshold_attention_fwd(q1: Tensor, k1: Tensor, v: Tensor, q2: Optional[Tensor], k2: Optional[Tensor],
                            lam: Optional[Tensor], beta: Tensor, *rest) -> tuple[Tensor, ...]:
    """Fused forward; ``rest``: ThresholdOptions' values, then record (the occupied tiles) and skip (the products of
    empty ones, where tiles.forward_skips_products says so). Shapes as in ``autograd.threshold_attention_triton``."""
    record, skip = rest[_N_OPTIONS:]
    return launch.forward(q1, k1, v, q2, k2, lam, beta, ThresholdOptions(*rest[:_N_OPTIONS]), record=record,
                          skip_products=skip)


@threshold_attention_fwd.register_fake
def _(q1, k1, v, q2, k2, lam, beta, *rest):
    normalize = ThresholdOptions(*rest[:_N_OPTIONS]).normalize

    def norms(x: Optional[Tensor]) -> Tensor:
        if normalize and x is not None:
            return x.new_empty(x.shape[:3], dtype=torch.float32)
        return _empty(q1)

    B, H, Tq, _ = q1.shape
    record = rest[_N_OPTIONS]
    rec = (q1.new_empty(record_shape(B, H, Tq, k1.shape[2]), dtype=torch.uint8) if record
           else q1.new_empty(0, dtype=torch.uint8))
    return (common.new_rows_like(q1, v.shape[-1]), norms(q1), norms(k1), norms(q2), norms(k2), rec)


@torch.library.custom_op("tda_kernels::threshold_attention_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def threshold_attention_bwd(do: Tensor, q1: Tensor, k1: Tensor, v: Tensor, q2: Optional[Tensor],
                            k2: Optional[Tensor], rq1: Tensor, rk1: Tensor, rq2: Tensor, rk2: Tensor, rec: Tensor,
                            lam: Optional[Tensor], beta: Tensor, *rest) -> tuple[Tensor, ...]:
    """Fused backward, over the tiles ``rec`` marks (every tile when it is empty); ``rest``: ThresholdOptions' values,
    then need_dlam, need_dbeta and deterministic (which takes the atomic-free dQ kernel)."""
    grads = launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta,
                            ThresholdOptions(*rest[:_N_OPTIONS]), *rest[_N_OPTIONS:])
    return tuple(g if g is not None else _empty(q1) for g in grads)


@threshold_attention_bwd.register_fake
def _(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, *rest):
    need_dlam, need_dbeta, _ = rest[_N_OPTIONS:]
    two = q2 is not None
    H = q1.shape[1]
    head = q1.new_empty(H, dtype=torch.float32)
    return (common.new_rows_like(q1, q1.shape[-1]), common.new_rows_like(k1, k1.shape[-1]),
            common.new_rows_like(v, v.shape[-1]),
            common.new_rows_like(q2, q2.shape[-1]) if two else _empty(q1),
            common.new_rows_like(k2, k2.shape[-1]) if two else _empty(q1),
            head if need_dlam and two else _empty(q1),
            q1.new_empty(H, dtype=torch.float32) if need_dbeta else _empty(q1))
