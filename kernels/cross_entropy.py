"""The language-model loss's per-chunk pass as one Triton kernel: from a chunk's logits (rows, padded vocabulary), each
row's cross-entropy and the mean loss's gradient with respect to the logits, (softmax − one-hot) / n, in the logits'
dtype. model/loss.py calls it for the chunked loss on CUDA while ``model.loss.FUSED`` is set, the default
(``cross_entropy_rows``; CPU tensors under Triton's interpreter too, for the tests).

One program per row, two passes over the row in blocks of BLOCK classes: the first keeps a running maximum and sum of
exponentials per lane (no reduction inside the loop) and combines them into the log-sum-exp at the end; the second
reads the row again (most likely from L2, by size: 132 rows of a GPT-2 vocabulary in bf16 are 13 MB; not profiled)
and writes the gradient. Classes from
``vocab`` to the padded width are read as −inf: their softmax is 0, so their gradient is written as 0 and they add
nothing to the log-sum-exp. The arithmetic is float32 throughout, as the PyTorch path's (model/loss.py), in another
order: the log-sum-exp may differ from it in its last bits.

Why not leave this to torch.compile: inductor fuses the same expressions into one reduction kernel, which was slower
than this one on an H100 (BENCHMARKS.md, "The loss's pass"; ``python -m benchmarks.loss`` times both).

The kernel is the custom op ``lm_kernels::cross_entropy_rows`` (with a fake implementation), so a compiled model
traces it as one opaque call.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common, fast_launch
from .common import cdiv

BLOCK = 4096     # classes per step of a row's loop
NUM_WARPS = 8


@triton.jit
def cross_entropy_rows_kernel(L, T, G, LOSS, vocab, width, stride_l, stride_g, inv_n,
                              BLOCK: tl.constexpr, STEPS: tl.constexpr):
    """Row r of logits L (width columns, the first ``vocab`` real): LOSS[r] = lse − L[r, T[r]], G[r] = (softmax −
    one-hot) * inv_n in G's dtype (0 in the padding's columns)."""
    row = tl.program_id(0).to(tl.int64)
    src = L + row * stride_l
    lanes = tl.arange(0, BLOCK)
    big = tl.full((BLOCK,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK,), tl.float32)
    for step in range(STEPS):
        cols = step * BLOCK + lanes
        x = tl.load(src + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        new = tl.maximum(big, x)
        # a lane that has seen only −inf keeps a zero sum (exp(−inf − (−inf)) would be NaN)
        total = tl.where(new == float("-inf"), 0.0, total * tl.exp(big - new) + tl.exp(x - new))
        big = new
    top = tl.max(big, 0)
    lse = top + tl.log(tl.sum(total * tl.exp(big - top), 0))
    target = tl.load(T + row)
    tl.store(LOSS + row, lse - tl.load(src + target).to(tl.float32))
    dst = G + row * stride_g
    for step in range(STEPS):
        cols = step * BLOCK + lanes
        x = tl.load(src + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        p = tl.exp(x - lse)
        grad = tl.where(cols == target, p - 1.0, p) * inv_n
        tl.store(dst + cols, grad.to(G.dtype.element_ty), mask=cols < width)


@torch.library.custom_op("lm_kernels::cross_entropy_rows", mutates_args=(),
                         schema="(Tensor logits, Tensor targets, int vocab, float inv_n) -> (Tensor, Tensor)")
def _cross_entropy_rows(logits: Tensor, targets: Tensor, vocab: int, inv_n: float) -> tuple[Tensor, Tensor]:
    rows, width = logits.shape
    grad = common.new_output((rows, width), logits.dtype, logits.device)
    loss = common.new_output((rows,), torch.float32, logits.device)
    if rows:
        fast_launch.launch(cross_entropy_rows_kernel, (rows,), (
            logits, targets, grad, loss, vocab, width, logits.stride(0), grad.stride(0), inv_n),
            dict(BLOCK=BLOCK, STEPS=cdiv(width, BLOCK), num_warps=NUM_WARPS))
    return loss, grad


@_cross_entropy_rows.register_fake
def _(logits, targets, vocab, inv_n):
    return (logits.new_empty(logits.shape[0], dtype=torch.float32),
            torch.empty_like(logits, memory_format=torch.contiguous_format))


def cross_entropy_rows(logits: Tensor, targets: Tensor, vocab: int, inv_n: float) -> tuple[Tensor, Tensor]:
    """(per-row loss (rows,) float32, gradient of the logits in their dtype) for logits (rows, width) whose last
    dimension is contiguous, the first ``vocab`` columns real (width − vocab of padding), int64 targets (rows,) in
    [0, vocab), the gradient scaled by ``inv_n`` (1 / the tokens the mean is over)."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be (rows, width) with a contiguous last dimension, got shape "
                         f"{tuple(logits.shape)} and strides {logits.stride()}")
    if not 0 < vocab <= logits.shape[1]:
        raise ValueError(f"vocab must be in [1, {logits.shape[1]}] (the logits' width), got {vocab}")
    if targets.shape != logits.shape[:1] or targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 of shape ({logits.shape[0]},), got {targets.dtype} "
                         f"{tuple(targets.shape)}")
    return _cross_entropy_rows(logits, targets, vocab, float(inv_n))
