"""Attention kernels, one folder per op, and what the ops share beside them.

Ops: kernels/threshold/ (TDA, TRA, ReLA), kernels/sigmoid/ (sigmoid attention), kernels/softpick/ (softpick, with the
row-normalised kernels that also serve kernels/sink_softmax/, softmax with a sink logit), kernels/decode/ (one query
against the cache). What the one-view score ops (sigmoid, softpick, softmax with a sink) share is kernels/score_ops/:
their input check and launches, Triton device helpers, the blocked PyTorch references' machinery, and their Gluon
kernels for Hopper. Shared by every op: common.py (the interpreter switch, output layout, copy-engine conditions,
compile-only targets), inputs.py (the input checks every op makes, whether the kernels apply, per-head parameters),
fast_launch.py (launches without Triton's per-call binding), gluon_tiles.py (the Gluon helpers every Hopper kernel
shares) and gluon_support.py (whether they can run here: Triton's Gluon, a Hopper GPU, the layouts they take);
cross_entropy.py is the fused loss.

The model imports its entry points from here: each runs the fused kernels on CUDA tensors they support and an exact
PyTorch implementation otherwise. This package imports nothing from the rest of the project, and imports Triton only
when a kernel runs.
"""
from kernels.sigmoid import sigmoid_attention, sigmoid_attention_reference, sigmoid_attention_weights
from kernels.sink_softmax import sink_softmax_attention, sink_softmax_attention_reference
from kernels.softpick import softpick_attention, softpick_attention_reference, softpick_attention_weights
from kernels.threshold import (ThresholdOptions, threshold_attention, threshold_attention_paired,
                               threshold_attention_reference, threshold_attention_weights)

__all__ = ["ThresholdOptions", "threshold_attention", "threshold_attention_paired", "threshold_attention_reference",
           "threshold_attention_weights",
           "sigmoid_attention", "sigmoid_attention_reference", "sigmoid_attention_weights",
           "softpick_attention", "softpick_attention_reference", "softpick_attention_weights",
           "sink_softmax_attention", "sink_softmax_attention_reference"]
