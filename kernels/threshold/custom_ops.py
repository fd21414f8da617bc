"""The Triton forward and backward as ``torch.library`` custom ops, so ``torch.compile`` of a model
treats each as one opaque call (with a shape-only fake implementation) instead of breaking the graph.

``tda_kernels::threshold_attention_fwd`` returns (out, rq1, rk1, rq2, rk2), the inverse norms that the
backward reuses (empty tensors where they do not apply); ``tda_kernels::threshold_attention_bwd``
returns (dq1, dk1, dv, dq2, dk2, dlam, dbeta) with empty tensors for gradients not asked for.
"""

from typing import Optional

import torch
from torch import Tensor

from . import launch


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.float32)


@torch.library.custom_op("tda_kernels::threshold_attention_fwd", mutates_args=())
def threshold_attention_fwd(q1: Tensor, k1: Tensor, v: Tensor, q2: Optional[Tensor],
                            k2: Optional[Tensor], lam: Optional[Tensor], beta: Tensor, p: float,
                            normalize: bool, scale: float, causal: bool,
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused forward. Shapes as in ``kernels.autograd.threshold_attention_triton``."""
    return launch.forward(q1, k1, v, q2, k2, lam, beta, p, normalize, scale, causal)


@threshold_attention_fwd.register_fake
def _(q1, k1, v, q2, k2, lam, beta, p, normalize, scale, causal):
    def norms(x: Optional[Tensor]) -> Tensor:
        if normalize and x is not None:
            return x.new_empty(x.shape[:3], dtype=torch.float32)
        return _empty(q1)

    return (launch.new_rows_like(q1, v.shape[-1]), norms(q1), norms(k1), norms(q2), norms(k2))


@torch.library.custom_op("tda_kernels::threshold_attention_bwd", mutates_args=())
def threshold_attention_bwd(do: Tensor, q1: Tensor, k1: Tensor, v: Tensor, q2: Optional[Tensor],
                            k2: Optional[Tensor], rq1: Tensor, rk1: Tensor, rq2: Tensor, rk2: Tensor,
                            lam: Optional[Tensor], beta: Tensor, p: float, normalize: bool,
                            scale: float, causal: bool, need_dlam: bool, need_dbeta: bool,
                            deterministic: bool,
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused backward; ``deterministic`` takes the atomic-free dQ kernel."""
    grads = launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, p, normalize,
                            scale, causal, need_dlam, need_dbeta, deterministic)
    return tuple(g if g is not None else _empty(q1) for g in grads)


@threshold_attention_bwd.register_fake
def _(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, p, normalize, scale, causal, need_dlam,
      need_dbeta, deterministic):
    two = q2 is not None
    H = q1.shape[1]
    head = q1.new_empty(H, dtype=torch.float32)
    return (launch.new_rows_like(q1, q1.shape[-1]), launch.new_rows_like(k1, k1.shape[-1]),
            launch.new_rows_like(v, v.shape[-1]),
            launch.new_rows_like(q2, q2.shape[-1]) if two else _empty(q1),
            launch.new_rows_like(k2, k2.shape[-1]) if two else _empty(q1),
            head if need_dlam and two else _empty(q1),
            q1.new_empty(H, dtype=torch.float32) if need_dbeta else _empty(q1))
