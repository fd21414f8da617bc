"""Triton forward kernel of threshold attention: TDA (two views, one v), TRA and ReLA (one view).

One program computes BLOCK_M query rows of one head:

    u_ij = s_ij * r_i * r'_j - tau_i          s = raw q.k on the tensor cores, fp32 accumulate
    P_ij = max(u1_ij, 0)^p - lam * max(u2_ij, 0)^p      (the second term only for TDA)
    o_i  = sum_j P_ij v_j                     one product with v for both views

There is no softmax state (no row max, no row sum, no rescale). Causal: key blocks wholly left of
the diagonal run without masks, the blocks that cross it with the mask, blocks right of it are never
visited; the longest query blocks are launched first. Query row i has absolute position
i + Tk - Tq (bottom-right alignment) and tau_i uses that position.

With RECORD the kernel also marks, in the record of triton_lists.py, the 64 x 64 cells in which a weight survived,
for the backward's lists: each thread folds the rectified scores it holds into flags of whole cells and stores a byte
for each that is set (triton_lists.tile_flags), so the record adds no barrier and no exchange between threads to the
key loop. With SKIP_EMPTY a tile without a survivor skips its product with v, by a branch in the loop (which costs
Triton's software pipelining: README.md in this folder).
"""

import triton
import triton.language as tl

from .triton_lists import mark_cells, tile_flags
from .triton_math import (head_base, inverse_row_norms, key_scores, load_rows, query_block_program, relu_power,
                          threshold_gain, visible_keys)


@triton.jit
def _key_block(
    acc, q1, q2, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
    K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d, offs_n, offs_d, offs_dv,
    REC_bh, m0, Tq, nN,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, TWO_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr,
    P_MODE: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, MASKED: tl.constexpr,
    USE_TMA: tl.constexpr, SKIP_EMPTY: tl.constexpr, RECORD: tl.constexpr,
):
    """Add one key block's contribution P @ v to ``acc`` (BLOCK_M x BLOCK_DV, fp32); with RECORD mark the record's
    cells where a weight survived; with SKIP_EMPTY the product is skipped when no weight of the tile survives in
    either view (exact: it would add zeros)."""
    cols = n0 + offs_n
    key_ok = cols < Tk
    _, _, u1 = key_scores(q1, K1h, RK1h, cols, key_ok, offs_d, sk1_t, sk1_d, rq1, tau, pos, b, hk, n0,
                          HEAD_D, BLOCK_D, BLOCK_N, NORMALIZE, CAUSAL, CAST_F32, DOT_PREC, MASKED, USE_TMA)
    w = relu_power(u1, p, P_MODE)
    if TWO_VIEWS:
        _, _, u2 = key_scores(q2, K2h, RK2h, cols, key_ok, offs_d, sk2_t, sk2_d, rq2, tau, pos, b, hk, n0,
                              HEAD_D, BLOCK_D, BLOCK_N, NORMALIZE, CAUSAL, CAST_F32, DOT_PREC, MASKED, USE_TMA)
        w = w - lam * relu_power(u2, p, P_MODE)
    else:
        u2 = u1  # (tile_flags reads it only with TWO_VIEWS)
    v = load_rows(Vh, b, hk, n0, cols, offs_dv, sv_t, sv_d, key_ok, offs_dv < HEAD_DV, MASKED, BLOCK_DV != HEAD_DV,
                  CAST_F32, BLOCK_N, BLOCK_DV, USE_TMA)
    if RECORD or SKIP_EMPTY:
        flag = tile_flags(u1, u2, TWO_VIEWS, BLOCK_M, BLOCK_N)
        if RECORD:
            mark_cells(REC_bh, m0, Tq, n0, flag, nN, BLOCK_M, BLOCK_N)
    if SKIP_EMPTY:
        if tl.max(flag.to(tl.int32)) != 0:  # a weight survives iff its u > 0
            acc = tl.dot(w.to(v.dtype), v, acc, input_precision=DOT_PREC)
    else:
        acc = tl.dot(w.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def _query_factors(q, rq_ptrs, row_ok, scale, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr):
    """Per-row score factor scale * r_q; with normalisation also stores r_q for the backward."""
    if NORMALIZE:
        r = inverse_row_norms(q)
        tl.store(rq_ptrs, r, mask=row_ok)
        factor = r * scale
    else:
        factor = tl.full([BLOCK_M], scale, tl.float32)
    return factor


@triton.jit
def threshold_attention_fwd_kernel(
    Q1, K1, Q2, K2, V, O, RQ1, RK1, RQ2, RK2, LAM, BETA,
    sq1_b, sq1_h, sq1_t, sq1_d, sk1_b, sk1_h, sk1_t, sk1_d,
    sq2_b, sq2_h, sq2_t, sq2_d, sk2_b, sk2_h, sk2_t, sk2_d,
    sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t, so_d, REC, nM, nN,
    H, GROUP, Tq, Tk, num_bh, num_m_blocks, scale, p, inv_d,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    TWO_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
    CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr, SKIP_EMPTY: tl.constexpr,
    RECORD: tl.constexpr,
):
    """Grid: (num_m_blocks * B * H,), longest query blocks first, heads adjacent within a wave. With
    USE_TMA, Q1, K1, Q2, K2, V are 4-D tensor descriptors (blocks of one head's rows); with SKIP_EMPTY,
    key blocks without a surviving weight skip the product with v; with RECORD, REC is the zero-filled uint8
    record (B, H, nM, nN) of triton_lists.py, whose cells the kernel marks.

    Shapes: Q* (B, H, Tq, HEAD_D), K* (B, H // GROUP, Tk, HEAD_D), V (B, H // GROUP, Tk, HEAD_DV),
    O (B, H, Tq, HEAD_DV); RK* (B, Hkv, Tk) fp32 inverse key norms (input); RQ* (B, H, Tq) fp32
    inverse query norms (output, written when NORMALIZE); LAM, BETA (H,) fp32.
    """
    b, h, hk, m0 = query_block_program(num_bh, num_m_blocks, H, GROUP, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Tq
    d_ok = offs_d < HEAD_D

    Q1h = head_base(Q1, b, h, sq1_b, sq1_h, USE_TMA)
    Q2h = head_base(Q2, b, h, sq2_b, sq2_h, USE_TMA)
    K1h = head_base(K1, b, hk, sk1_b, sk1_h, USE_TMA)
    K2h = head_base(K2, b, hk, sk2_b, sk2_h, USE_TMA)
    Vh = head_base(V, b, hk, sv_b, sv_h, USE_TMA)
    q1 = load_rows(Q1h, b, h, m0, offs_m, offs_d, sq1_t, sq1_d, row_ok, d_ok, True, BLOCK_D != HEAD_D, CAST_F32,
                   BLOCK_M, BLOCK_D, USE_TMA)
    rq1 = _query_factors(q1, RQ1 + (b * H + h) * Tq + offs_m, row_ok, scale, NORMALIZE, BLOCK_M)
    pos = offs_m + (Tk - Tq)
    tau = tl.load(BETA + h) * threshold_gain(pos, inv_d)
    if TWO_VIEWS:
        q2 = load_rows(Q2h, b, h, m0, offs_m, offs_d, sq2_t, sq2_d, row_ok, d_ok, True, BLOCK_D != HEAD_D, CAST_F32,
                       BLOCK_M, BLOCK_D, USE_TMA)
        rq2 = _query_factors(q2, RQ2 + (b * H + h) * Tq + offs_m, row_ok, scale, NORMALIZE, BLOCK_M)
        lam = tl.load(LAM + h)
    else:
        q2 = q1
        rq2 = rq1
        lam = 0.0

    Hkv = H // GROUP
    RK1h = RK1 + (b * Hkv + hk) * Tk
    RK2h = RK2 + (b * Hkv + hk) * Tk

    full_end, hi = visible_keys(m0, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    REC_bh = REC + (b * H + h) * nM * nN

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for n0 in range(0, full_end, BLOCK_N):
        acc = _key_block(acc, q1, q2, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
                         K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d,
                         offs_n, offs_d, offs_dv, REC_bh, m0, Tq, nN, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_N,
                         BLOCK_D, BLOCK_DV, TWO_VIEWS,
                         NORMALIZE, CAUSAL, P_MODE, CAST_F32, DOT_PREC, False, USE_TMA, SKIP_EMPTY, RECORD)
    for n0 in range(full_end, hi, BLOCK_N):
        acc = _key_block(acc, q1, q2, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
                         K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d,
                         offs_n, offs_d, offs_dv, REC_bh, m0, Tq, nN, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_N,
                         BLOCK_D, BLOCK_DV, TWO_VIEWS,
                         NORMALIZE, CAUSAL, P_MODE, CAST_F32, DOT_PREC, True, USE_TMA, SKIP_EMPTY, RECORD)

    o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_dv[None, :] * so_d
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv < HEAD_DV)[None, :])
