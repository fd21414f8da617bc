"""Triton backward kernels of sigmoid attention.

With z_ij = x_ij + b_h (x = scale·q·k), w = σ(z), dW = dO·vᵀ (one product) and dZ = dW ⊙ σ(z)(1 − σ(z)):

    dV_j = Σ_i w_ij dO_i ,  dK_j = scale Σ_i dZ_ij q_i ,  dQ_i = scale Σ_j dZ_ij k_j ,  db_h = Σ_{b,i,j} dZ_ij

No row statistic enters (no Δ_i = rowsum(dO ⊙ O) pre-pass): five products per tile pair, the weights recomputed.

* ``sigmoid_dkdv_kernel``: one program per key block and key/value head holds k, v, dK, dV over the query blocks of
  every query head of its group (key block 0, seen by every query, first); tiles are laid out (queries, keys). It
  writes per-program partial sums of db_h (reduced on the host in a fixed order) and, with DQ_ATOMIC, adds dQ/scale
  into an fp32 buffer with atomics (finished by score_ops.triton_tiles.dq_finish_kernel). The sum of dZ over a tile's queries,
  which db needs, is a reduction across the warps that hold the tile's rows (through shared memory, with a barrier,
  every tile); with DB_BY_DOT it is instead a small product dZᵀ·1 (BLOCK_M × 16 ones) on the tensor cores beside
  dK's, accumulated per key in 16 identical columns, and reduced across warps once per program.
* ``sigmoid_dq_kernel``: dQ with one program per query block and no atomics (the deterministic path): scores, dW
  and dZ recomputed, three products per tile pair.
"""

import triton
import triton.language as tl

from ..score_ops.triton_tiles import key_block_program, load_tile, query_block_program, visible, visible_keys, visible_queries
from .triton_forward import sigmoid_exp2

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _dkdv_query_block(
    dk, dv, db, k, v, bias2, qk_scale2, Qh, DOh, DQh, sq_t, sq_d, sdo_t, sdo_d, m0, Tq, Tk, offs_n, key_ok, offs_d,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
    SIGMOID_MODE: tl.constexpr, DQ_ATOMIC: tl.constexpr, BIAS_GRAD: tl.constexpr, DB_BY_DOT: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One query block's share of a key block's dK, dV and db (and its dQ by atomics). Rows past Tq load dO = 0
    and so add nothing; keys past Tk load k = v = 0, so their dW (and dZ) are 0 and their rows are never stored."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    offs_dv = tl.arange(0, BLOCK_DV)
    q = load_tile(Qh, offs_m, offs_d, sq_t, sq_d, row_ok, offs_d < HEAD_D, True, BLOCK_D != HEAD_D, CAST_F32)
    do = load_tile(DOh, offs_m, offs_dv, sdo_t, sdo_d, row_ok, offs_dv < HEAD_DV, True, BLOCK_DV != HEAD_DV,
                   CAST_F32)
    z = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2 + bias2
    w, slope = sigmoid_exp2(z, SIGMOID_MODE)
    if MASKED:
        keep = visible(offs_m + (Tk - Tq), offs_n, key_ok, CAUSAL)
        w = tl.where(keep, w, 0.0)
        slope = tl.where(keep, slope, 0.0)
    dv = tl.dot(tl.trans(w.to(do.dtype)), do, dv, input_precision=DOT_PREC)
    dz = tl.dot(do, tl.trans(v), input_precision=DOT_PREC) * slope
    dz16 = dz.to(q.dtype)
    if BIAS_GRAD:
        if DB_BY_DOT:
            db = tl.dot(tl.trans(dz16), tl.full([BLOCK_M, 16], 1.0, dz16.dtype), db, input_precision=DOT_PREC)
        else:
            db += tl.sum(dz, axis=0)
    dk = tl.dot(tl.trans(dz16), q, dk, input_precision=DOT_PREC)
    if DQ_ATOMIC:
        dq = tl.dot(dz16, k, input_precision=DOT_PREC)
        tl.atomic_add(DQh + offs_m[:, None] * HEAD_D + offs_d[None, :], dq,
                      mask=row_ok[:, None] & (offs_d < HEAD_D)[None, :], sem="relaxed")
    return dk, dv, db


@triton.jit
def sigmoid_dkdv_kernel(
    Q, K, V, DO, BIAS, DK, DV, DQACC, DB_PART,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t,
    H, GROUP, Tq, Tk, num_bhk, num_n_blocks, qk_scale2, scale,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr,
    DOT_PREC: tl.constexpr, SIGMOID_MODE: tl.constexpr, DQ_ATOMIC: tl.constexpr, BIAS_GRAD: tl.constexpr,
    DB_BY_DOT: tl.constexpr,
):
    """Grid: (num_n_blocks * B * Hkv,). DK, DV shaped like K, V (strides sdk_*, sdv_*, last dimension contiguous);
    DQACC fp32 zero-filled contiguous (B, H, Tq, HEAD_D), used with DQ_ATOMIC; DB_PART (B, H, num_n_blocks) fp32,
    written with BIAS_GRAD."""
    Hkv = H // GROUP
    b, hk, nblk, n0 = key_block_program(num_bhk, Hkv, BLOCK_N)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_ok = offs_n < Tk
    k = load_tile(K + b * sk_b + hk * sk_h, offs_n, offs_d, sk_t, sk_d, key_ok, offs_d < HEAD_D, True,
                  BLOCK_D != HEAD_D, CAST_F32)
    v = load_tile(V + b * sv_b + hk * sv_h, offs_n, offs_dv, sv_t, sv_d, key_ok, offs_dv < HEAD_DV, True,
                  BLOCK_DV != HEAD_DV, CAST_F32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    m_lo, m_mid, m_end = visible_queries(n0, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    for g in range(GROUP):
        h = hk * GROUP + g
        bh = b * H + h
        bias2 = tl.load(BIAS + h) * LOG2E
        if DB_BY_DOT:
            db = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
        else:
            db = tl.zeros([BLOCK_N], dtype=tl.float32)
        Qh = Q + b * sq_b + h * sq_h
        DOh = DO + b * sdo_b + h * sdo_h
        DQh = DQACC + bh * Tq * HEAD_D
        for m0 in range(m_lo, m_mid, BLOCK_M):
            dk, dv, db = _dkdv_query_block(dk, dv, db, k, v, bias2, qk_scale2, Qh, DOh, DQh, sq_t, sq_d, sdo_t, sdo_d,
                                           m0, Tq, Tk, offs_n, key_ok, offs_d, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_D,
                                           BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, SIGMOID_MODE, DQ_ATOMIC, BIAS_GRAD,
                                           DB_BY_DOT, True)
        for m0 in range(m_mid, m_end, BLOCK_M):
            dk, dv, db = _dkdv_query_block(dk, dv, db, k, v, bias2, qk_scale2, Qh, DOh, DQh, sq_t, sq_d, sdo_t, sdo_d,
                                           m0, Tq, Tk, offs_n, key_ok, offs_d, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_D,
                                           BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, SIGMOID_MODE, DQ_ATOMIC, BIAS_GRAD,
                                           DB_BY_DOT, False)
        if BIAS_GRAD:
            if DB_BY_DOT:  # 16 equal columns: keep the first
                db = tl.sum(tl.where(tl.arange(0, 16)[None, :] == 0, db, 0.0), axis=1)
            tl.store(DB_PART + bh * num_n_blocks + nblk, tl.sum(db, axis=0))
    tl.store(DK + b * sdk_b + hk * sdk_h + offs_n[:, None] * sdk_t + offs_d[None, :],
             (dk * scale).to(DK.dtype.element_ty), mask=key_ok[:, None] & (offs_d < HEAD_D)[None, :])
    tl.store(DV + b * sdv_b + hk * sdv_h + offs_n[:, None] * sdv_t + offs_dv[None, :],
             dv.to(DV.dtype.element_ty), mask=key_ok[:, None] & (offs_dv < HEAD_DV)[None, :])


@triton.jit
def _dq_key_block(dq, q, do, bias2, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d, offs_dv,
                  HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  CAUSAL: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, SIGMOID_MODE: tl.constexpr,
                  MASKED: tl.constexpr):
    cols = n0 + offs_n
    key_ok = cols < Tk
    k = load_tile(Kh, cols, offs_d, sk_t, sk_d, key_ok, offs_d < HEAD_D, MASKED, BLOCK_D != HEAD_D, CAST_F32)
    v = load_tile(Vh, cols, offs_dv, sv_t, sv_d, key_ok, offs_dv < HEAD_DV, MASKED, BLOCK_DV != HEAD_DV, CAST_F32)
    z = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2 + bias2
    _, slope = sigmoid_exp2(z, SIGMOID_MODE)
    if MASKED:
        slope = tl.where(visible(pos, cols, key_ok, CAUSAL), slope, 0.0)
    dz = tl.dot(do, tl.trans(v), input_precision=DOT_PREC) * slope
    return tl.dot(dz.to(k.dtype), k, dq, input_precision=DOT_PREC)


@triton.jit
def sigmoid_dq_kernel(
    Q, K, V, DO, BIAS, DQ,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    sdq_b, sdq_h, sdq_t,
    H, GROUP, Tq, Tk, num_bh, num_m_blocks, qk_scale2, scale,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr,
    DOT_PREC: tl.constexpr, SIGMOID_MODE: tl.constexpr,
):
    """Deterministic dQ. Grid: (num_m_blocks * B * H,), longest first. DQ (B, H, Tq, HEAD_D), strides sdq_*."""
    b, h, hk, m0 = query_block_program(num_bh, num_m_blocks, H, GROUP, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Tq
    q = load_tile(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_t, sq_d, row_ok, offs_d < HEAD_D, True,
                  BLOCK_D != HEAD_D, CAST_F32)
    do = load_tile(DO + b * sdo_b + h * sdo_h, offs_m, offs_dv, sdo_t, sdo_d, row_ok, offs_dv < HEAD_DV, True,
                   BLOCK_DV != HEAD_DV, CAST_F32)
    bias2 = tl.load(BIAS + h) * LOG2E
    pos = offs_m + (Tk - Tq)
    Kh = K + b * sk_b + hk * sk_h
    Vh = V + b * sv_b + hk * sv_h
    full_end, hi = visible_keys(m0, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, full_end, BLOCK_N):
        dq = _dq_key_block(dq, q, do, bias2, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d,
                           offs_dv, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, SIGMOID_MODE,
                           False)
    for n0 in range(full_end, hi, BLOCK_N):
        dq = _dq_key_block(dq, q, do, bias2, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d,
                           offs_dv, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, SIGMOID_MODE,
                           True)
    tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_t + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d < HEAD_D)[None, :])
