"""Triton kernel for the inverse L2 norms of query/key rows (the q/k normalisation of SPEC §1).

The attention kernels never form q_hat = q / ||q|| in low precision: they multiply raw q.k on the
tensor cores and scale the fp32 score by r_q * r_k afterwards, so the scores keep fp32 accuracy.
This kernel produces those r = 1 / max(||x||, 1e-12), one fp32 number per row.
"""

import triton
import triton.language as tl

from .triton_math import NORM_EPS, load_tile


@triton.jit
def inverse_norm_kernel(
    X, R,
    sx_b, sx_h, sx_t, sx_d,
    H, T, num_t_blocks,
    HEAD_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """R[b, h, t] = 1 / max(||X[b, h, t, :]||_2, eps). X: (B, H, T, HEAD_D) any strides; R contiguous fp32."""
    pid = tl.program_id(0)
    bh = pid // num_t_blocks
    t0 = (pid % num_t_blocks) * BLOCK_T
    b = bh // H
    h = bh % H
    offs_t = t0 + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = (X + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
            + offs_t[:, None] * sx_t + offs_d[None, :] * sx_d)
    x = load_tile(ptrs, offs_t < T, offs_d < HEAD_D, True, BLOCK_D != HEAD_D, True)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    tl.store(R + bh.to(tl.int64) * T + offs_t, 1.0 / tl.maximum(norm, NORM_EPS), mask=offs_t < T)
