"""The sigmoid launchers as ``torch.library`` custom ops, so ``torch.compile`` of a model treats the forward and the
backward each as one opaque call with a shape-only fake implementation, instead of breaking the graph.

``sink_free_kernels::sigmoid_attention_fwd`` returns the output; ``sink_free_kernels::sigmoid_attention_bwd`` returns
(dq, dk, dv, dbias), dbias an empty tensor when not asked for.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import common
from . import launch

_FWD = "(Tensor q, Tensor k, Tensor v, Tensor bias, float scale, bool causal) -> Tensor"
_BWD = ("(Tensor do, Tensor q, Tensor k, Tensor v, Tensor bias, float scale, bool causal, bool need_dbias, "
        "bool deterministic) -> (Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("sink_free_kernels::sigmoid_attention_fwd", mutates_args=(), schema=_FWD)
def sigmoid_attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, causal: bool) -> Tensor:
    return launch.forward(q, k, v, bias, scale, causal)


@sigmoid_attention_fwd.register_fake
def _(q, k, v, bias, scale, causal):
    return common.new_rows_like(q, v.shape[-1])


@torch.library.custom_op("sink_free_kernels::sigmoid_attention_bwd", mutates_args=(), schema=_BWD)
def sigmoid_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, causal: bool,
                          need_dbias: bool, deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dbias = launch.backward(do, q, k, v, bias, scale, causal, need_dbias, deterministic)
    return dq, dk, dv, dbias if dbias is not None else q.new_empty(0, dtype=torch.float32)


@sigmoid_attention_bwd.register_fake
def _(do, q, k, v, bias, scale, causal, need_dbias, deterministic):
    dbias = q.new_empty(q.shape[1] if need_dbias else 0, dtype=torch.float32)
    return (common.new_rows_like(q, q.shape[-1]), common.new_rows_like(k, k.shape[-1]),
            common.new_rows_like(v, v.shape[-1]), dbias)
