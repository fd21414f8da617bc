"""Device helpers shared by the one-view score kernels (kernels/sigmoid/, kernels/softpick/): tile loads, the order in
which programs take query and key blocks, which blocks a causal map visits (and which of them need the mask), and the
kernel that turns dQ accumulated in fp32 into the gradient. The query-block order and the visible key blocks are the
threshold kernels' own (kernels/threshold/triton_math.py), taken from there.

Layout conventions: a program of a query-parallel kernel owns BLOCK_M query rows of one head, the longest blocks
(those that see the most keys) launched first and the heads of one block adjacent, so programs running together share
keys and values in L2. A program of a key-parallel kernel owns BLOCK_N keys of one key/value head, key block 0 (seen
by every query) first. Query row i sits at absolute position i + Tk − Tq.
"""

import triton
import triton.language as tl

from kernels.threshold.triton_math import load_tile as load_pointer_tile
from kernels.threshold.triton_math import query_block_program, tile_ptrs, visible_keys  # noqa: F401 (shared here)


@triton.jit
def load_tile(base, rows, cols, s_row, s_col, row_ok, col_ok, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr,
              CAST_F32: tl.constexpr):
    """base[rows, cols] (strides s_row, s_col); rows / columns failing their check read as 0; fp32 if CAST_F32.
    The threshold kernels' pointer-tile load, with the pointers built here."""
    return load_pointer_tile(tile_ptrs(base, rows, cols, s_row, s_col), row_ok, col_ok, CHECK_ROWS, CHECK_COLS,
                             CAST_F32)


@triton.jit
def key_block_program(num_bhk, Hkv, BLOCK_N: tl.constexpr):
    """This program's key block in a (num_n_blocks * B * Hkv,) grid, block 0 first: (b, hk, nblk, n0)."""
    pid = tl.program_id(0)
    bhk = pid % num_bhk
    nblk = pid // num_bhk
    b = (bhk // Hkv).to(tl.int64)
    hk = (bhk % Hkv).to(tl.int64)
    return b, hk, nblk, nblk * BLOCK_N


@triton.jit
def visible_queries(n0, Tq, Tk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """For the key block starting at key n0: (m_lo, m_mid, m_end). Query blocks in [m_lo, m_mid) see part of the
    block (mask); those in [m_mid, m_end) see all of it (rows past Tq are masked by their loads); rows before m_lo
    see none of it."""
    m_end = tl.cdiv(Tq, BLOCK_M) * BLOCK_M
    if CAUSAL:
        m_lo = (tl.maximum(n0 - (Tk - Tq), 0) // BLOCK_M) * BLOCK_M
        m_mid = tl.cdiv(n0 + BLOCK_N - 1 - (Tk - Tq), BLOCK_M) * BLOCK_M
        m_mid = tl.minimum(tl.maximum(m_mid, m_lo), m_end)
    else:
        m_lo = 0
        m_mid = 0
    return m_lo, m_mid, m_end


@triton.jit
def visible(pos, cols, key_ok, CAUSAL: tl.constexpr):
    """(rows, keys) mask of the entries a row at absolute position ``pos`` sees among keys ``cols``."""
    keep = key_ok[None, :]
    if CAUSAL:
        keep = keep & (cols[None, :] <= pos[:, None])
    return keep


@triton.jit
def dq_finish_kernel(ACC, DQ, sdq_b, sdq_h, sdq_t, H, Tq, num_m_blocks, factor,
                     HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """DQ = factor · ACC, cast to DQ's dtype. ACC fp32 contiguous (B, H, Tq, HEAD_D); DQ of that shape with strides
    sdq_* (the last dimension contiguous). Grid: (B * H * num_m_blocks,)."""
    pid = tl.program_id(0)
    bh = (pid // num_m_blocks).to(tl.int64)
    offs_m = (pid % num_m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < Tq)[:, None] & (offs_d < HEAD_D)[None, :]
    acc = tl.load(ACC + bh * Tq * HEAD_D + offs_m[:, None] * HEAD_D + offs_d[None, :], mask=ok, other=0.0)
    b = bh // H
    h = bh % H
    tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_t + offs_d[None, :],
             (acc * factor).to(DQ.dtype.element_ty), mask=ok)
