"""Attention kernels, one folder per op (kernels/threshold/: TDA, TRA, ReLA), and what the ops share beside them
(common.py: the interpreter switch, output layout, copy-engine conditions, compile-only targets; fast_launch.py:
launches without Triton's per-call binding).

The model imports ``threshold_attention`` and ``threshold_attention_weights`` from here. This package imports
nothing from the rest of the project, and imports Triton only when a kernel runs.
"""
from kernels.threshold import (ThresholdOptions, threshold_attention, threshold_attention_reference,
                               threshold_attention_weights)

__all__ = ["ThresholdOptions", "threshold_attention", "threshold_attention_reference", "threshold_attention_weights"]
