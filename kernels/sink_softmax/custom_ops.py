"""The sink-softmax launchers as ``torch.library`` custom ops, so ``torch.compile`` of a model treats the forward and
the backward each as one opaque call with a shape-only fake implementation, instead of breaking the graph.

``sink_free_kernels::sink_softmax_attention_fwd`` returns (out, lse); ``sink_free_kernels::sink_softmax_attention_bwd``
returns (dq, dk, dv, dsink), dsink an empty tensor when not asked for.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import common
from ..softpick import launch

_FWD = "(Tensor q, Tensor k, Tensor v, Tensor sink, float scale, bool causal) -> (Tensor, Tensor)"
_BWD = ("(Tensor do, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor sink, float scale, bool causal, "
        "bool need_dsink, bool deterministic) -> (Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("sink_free_kernels::sink_softmax_attention_fwd", mutates_args=(), schema=_FWD)
def sink_softmax_attention_fwd(q: Tensor, k: Tensor, v: Tensor, sink: Tensor, scale: float,
                               causal: bool) -> tuple[Tensor, Tensor]:
    return launch.forward(q, k, v, sink, scale, 0.0, causal)


@sink_softmax_attention_fwd.register_fake
def _(q, k, v, sink, scale, causal):
    return common.new_rows_like(q, v.shape[-1]), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("sink_free_kernels::sink_softmax_attention_bwd", mutates_args=(), schema=_BWD)
def sink_softmax_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, sink: Tensor,
                               scale: float, causal: bool, need_dsink: bool,
                               deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dsink = launch.backward(do, q, k, v, out, lse, sink, scale, causal, need_dsink, deterministic)
    return dq, dk, dv, dsink if dsink is not None else q.new_empty(0, dtype=torch.float32)


@sink_softmax_attention_bwd.register_fake
def _(do, q, k, v, out, lse, sink, scale, causal, need_dsink, deterministic):
    dsink = q.new_empty(q.shape[1] if need_dsink else 0, dtype=torch.float32)
    return (common.new_rows_like(q, q.shape[-1]), common.new_rows_like(k, k.shape[-1]),
            common.new_rows_like(v, v.shape[-1]), dsink)
