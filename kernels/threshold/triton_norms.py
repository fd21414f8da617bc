"""Triton kernel for the inverse L2 norms of key rows (the q/k normalisation of SPEC §1).

The attention kernels never form k_hat = k / ||k|| in low precision: they multiply raw q.k on the
tensor cores and scale the fp32 score by r_q * r_k afterwards, so the scores keep fp32 accuracy.
This kernel produces r = 1 / max(||k||, 1e-12), one fp32 number per key row, for both views in
one launch (the forward kernel computes the queries' own r from the tiles it loads).
"""

import triton
import triton.language as tl

from .triton_math import inverse_row_norms, load_tile, tile_ptrs


@triton.jit
def inverse_norm_kernel(
    X1, X2, R1, R2,
    s1_b, s1_h, s1_t, s1_d, s2_b, s2_h, s2_t, s2_d,
    H, T, num_t_blocks,
    HEAD_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """R*[b, h, t] = 1 / max(||X*[b, h, t, :]||_2, eps). X1, X2: (B, H, T, HEAD_D), any strides;
    R1, R2 contiguous fp32 (B, H, T). Grid: (B * H * num_t_blocks, number of views)."""
    pid = tl.program_id(0)
    bh = pid // num_t_blocks
    t0 = (pid % num_t_blocks) * BLOCK_T
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_t = t0 + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    if tl.program_id(1) == 0:
        ptrs = tile_ptrs(X1 + b * s1_b + h * s1_h, offs_t, offs_d, s1_t, s1_d)
        out = R1
    else:
        ptrs = tile_ptrs(X2 + b * s2_b + h * s2_h, offs_t, offs_d, s2_t, s2_d)
        out = R2
    x = load_tile(ptrs, offs_t < T, offs_d < HEAD_D, True, BLOCK_D != HEAD_D, True)
    tl.store(out + bh.to(tl.int64) * T + offs_t, inverse_row_norms(x), mask=offs_t < T)
