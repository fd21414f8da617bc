"""Attention kernels, one folder per op, and what the ops share beside them.

Ops: kernels/threshold/ (TDA, TRA, ReLA), kernels/sigmoid/ (sigmoid attention), kernels/softpick/ (softpick, with the
row-normalised kernels that also serve kernels/sink_softmax/, softmax with a sink logit). Shared: common.py (the
interpreter switch, output layout, copy-engine conditions, compile-only targets), inputs.py (the input checks every
op makes, whether the kernels apply, per-head parameters), fast_launch.py (launches without Triton's per-call binding),
and for the one-view score ops blocked.py (the blocked PyTorch references' machinery), score_ops.py (their input
check, tiles, launches), score_tiles.py (device helpers) and score_gluon.py with score_gluon_backward.py (their
backward as one Gluon kernel for Hopper); gluon_tiles.py holds the Gluon helpers every Hopper kernel shares and gluon_support.py
whether they can run here (Triton's Gluon, a Hopper GPU, the layouts they take).

The model imports its entry points from here: each runs the fused kernels on CUDA tensors they support and an exact
PyTorch implementation otherwise. This package imports nothing from the rest of the project, and imports Triton only
when a kernel runs.
"""
from kernels.sigmoid import sigmoid_attention, sigmoid_attention_reference, sigmoid_attention_weights
from kernels.sink_softmax import sink_softmax_attention, sink_softmax_attention_reference
from kernels.softpick import softpick_attention, softpick_attention_reference, softpick_attention_weights
from kernels.threshold import (ThresholdOptions, threshold_attention, threshold_attention_reference,
                               threshold_attention_weights)

__all__ = ["ThresholdOptions", "threshold_attention", "threshold_attention_reference", "threshold_attention_weights",
           "sigmoid_attention", "sigmoid_attention_reference", "sigmoid_attention_weights",
           "softpick_attention", "softpick_attention_reference", "softpick_attention_weights",
           "sink_softmax_attention", "sink_softmax_attention_reference"]
