"""Attention variants behind one registry (SPEC §1–2).

Every variant has the same interface:

    forward(x, positions, cache=None) -> y          x, y: (B, T, d_model); positions: (T,) or (B, T) absolute
    project(x, positions) -> Projections            the module's own q, k (after RoPE) and v
    maps(proj, rows) -> {"combined", "view1"[, "view2"]}   exact attention weights of a block of rows
    decode_mix(q, cache, positions) -> (B, H, 1, dv)       one decoding step against the cache (before head_output)

``project`` and ``maps`` are what the analysis probe uses to recompute attention exactly. ``cache`` is the layer's
part of a ``model.cache.StaticCache``: a forward of several tokens (the prefill of right-padded prompts, into an
empty cache) stores its keys and values at positions 0 … T − 1 and runs the training kernels; a forward of one
token per row stores it at the row's own position (positions (B, 1)) and runs ``decode_mix`` over the cache, in
which each row's query sees cache positions 0 … its position, and τ (threshold variants) and ln(i + 1) (SSMax) use
that position. The decoding paths are the kernels of ``kernels.decode`` (threshold and softmax families) or exact
PyTorch (sigmoid, softpick; every variant where the kernels do not run), and none of them synchronises with the
host, so the step can be captured in a CUDA graph. Under context parallelism (training/context_parallel.py) the
module's ``context`` is set and a forward sees this process's chunks of each sequence at their absolute positions;
``attend`` gathers the keys and values of the rest. A variant with learnable scalars of its own names them in
``scalars()`` (reported with λ and β by ``GPT.attention_scalars``). Variants register themselves with
``@register("name")``; ``build_attention`` makes one from the Hydra ``attention`` config.

Where they live: ``base.py`` (the registry, ``Projections``, the base module every variant extends, the SDPA and
exact-softmax helpers), ``softmax.py`` (softmax, gated_softmax), ``differential.py`` (differential and the paired
head layout), ``threshold.py`` (tda, tra, rela), ``sink_free.py`` (sigmoid, softpick, sink_softmax, ssmax).
"""
from model.attention.base import ATTENTIONS, Projections, build_attention, causal_mask, register
# importing each module registers its variants, in this order (the registry's, which tests and tables follow)
from model.attention.softmax import GatedSoftmaxAttention, SoftmaxAttention
from model.attention.differential import DifferentialAttention
from model.attention.threshold import (RectifiedLinearAttention, ThresholdDifferentialAttention,
                                       ThresholdRectifiedAttention)
from model.attention.sink_free import (ScalableSoftmaxAttention, SigmoidAttention, SinkSoftmaxAttention,
                                       SoftpickAttention)

__all__ = ["ATTENTIONS", "Projections", "build_attention", "causal_mask", "register", "SoftmaxAttention",
           "GatedSoftmaxAttention", "DifferentialAttention", "ThresholdDifferentialAttention",
           "ThresholdRectifiedAttention", "RectifiedLinearAttention", "SigmoidAttention", "SoftpickAttention",
           "SinkSoftmaxAttention", "ScalableSoftmaxAttention"]
