"""The softpick launchers as ``torch.library`` custom ops, so ``torch.compile`` of a model treats the forward and the
backward each as one opaque call with a shape-only fake implementation, instead of breaking the graph.

``sink_free_kernels::softpick_attention_fwd`` returns (out, lse); ``sink_free_kernels::softpick_attention_bwd``
returns (dq, dk, dv).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import common
from . import launch

_FWD = "(Tensor q, Tensor k, Tensor v, float scale, float eps, bool causal) -> (Tensor, Tensor)"
_BWD = ("(Tensor do, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale, bool causal, "
        "bool deterministic) -> (Tensor, Tensor, Tensor)")


@torch.library.custom_op("sink_free_kernels::softpick_attention_fwd", mutates_args=(), schema=_FWD)
def softpick_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float, eps: float,
                           causal: bool) -> tuple[Tensor, Tensor]:
    return launch.forward(q, k, v, None, scale, eps, causal)


@softpick_attention_fwd.register_fake
def _(q, k, v, scale, eps, causal):
    return common.new_rows_like(q, v.shape[-1]), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("sink_free_kernels::softpick_attention_bwd", mutates_args=(), schema=_BWD)
def softpick_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float,
                           causal: bool, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    return launch.backward(do, q, k, v, out, lse, None, scale, causal, False, deterministic)[:3]


@softpick_attention_bwd.register_fake
def _(do, q, k, v, out, lse, scale, causal, deterministic):
    return (common.new_rows_like(q, q.shape[-1]), common.new_rows_like(k, k.shape[-1]),
            common.new_rows_like(v, v.shape[-1]))
