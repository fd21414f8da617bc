"""Triton backward kernels of threshold attention (SPEC §1, "Gradients").

Notation (one head): R_ij = c r_i r'_j (c the score scale, r, r' inverse row norms, or R = c
without normalisation), u_ij = R_ij (q_i . k_j) - tau_i, e_ij = max(u_ij, 0)^(p-1) (1[u > 0] for
p = 1), dA = dO v^T (one product shared by both views). The kernels accumulate

    dS'_ij = e_ij R_ij dA_ij        (view 2: times -lam)
    dk'_j  = sum_i dS'_ij q_i ,   dq'_i = sum_j dS'_ij k_j ,   dv_j = sum_i P_ij dO_i

and finish with dk = p (dk' - r'^2 (k . dk') k) (the normalisation's backward; dk = p dk' without
it), likewise dq. Because R carries the norms, no normalised vector is ever rounded to 16 bits.

* ``dkdv_kernel``: one program per key block (and key/value head), dK1, dK2, dV in registers over
  the query blocks of every query head of its group; block 0, the longest, is launched first. It
  writes per-program partial sums for dlam and dbeta. With one view it can also add dq' into an
  fp32 buffer with atomics (DQ_ATOMIC: the faster path there, tiles.dq_atomic).
* ``dq_kernel``: dQ with one program per query block and no atomics: the deterministic path, and
  the default for two views, where holding dK1, dK2 and dV already fills the registers and the
  split ran faster than atomics (README.md in this folder); on Hopper, the inputs gluon_backward.py takes
  (paired q/k of 64, 16-bit) go to its fused kernel instead.
* ``dq_finish_kernel``: turns the atomically accumulated dq' into dq, and adds dlam's and dbeta's partial sums
  into their per-head gradients in the same launch (``head_sums_kernel`` does that alone after ``dq_kernel``).

With USE_LIST (exact skipping, the default) the dK/dV and dQ kernels loop over the lists of occupied tiles that
triton_lists.tile_lists_kernel built from the forward's record, an index loaded per step instead of a branch in the
loop: a tile without a surviving weight costs them nothing (no scores, products or atomics).
"""

import triton
import triton.language as tl

from .triton_math import (head_base, key_scores, load_inverse_norms, load_rows, load_tile, normalize_backward,
                          query_block_program, relu_power_and_slope, threshold_gain, tile_ptrs, visible_keys)


@triton.jit
def _per_query(x, QUERY_MAJOR: tl.constexpr):
    """A vector over the query block, broadcast along the score tile's query axis."""
    if QUERY_MAJOR:
        y = x[:, None]
    else:
        y = x[None, :]
    return y


@triton.jit
def _per_key(x, QUERY_MAJOR: tl.constexpr):
    """A vector over the key block, broadcast along the score tile's key axis."""
    if QUERY_MAJOR:
        y = x[None, :]
    else:
        y = x[:, None]
    return y


@triton.jit
def _score_tile(keys, queries, DOT_PREC: tl.constexpr, QUERY_MAJOR: tl.constexpr):
    """keys . queries^T laid out (keys, queries), or queries . keys^T laid out (queries, keys)."""
    if QUERY_MAJOR:
        t = tl.dot(queries, tl.trans(keys), input_precision=DOT_PREC)
    else:
        t = tl.dot(keys, tl.trans(queries), input_precision=DOT_PREC)
    return t


@triton.jit
def _into_keys(tile, rows, acc, DOT_PREC: tl.constexpr, QUERY_MAJOR: tl.constexpr):
    """acc (keys x width) + tile^(keys, queries) . rows (queries x width)."""
    if QUERY_MAJOR:
        acc = tl.dot(tl.trans(tile), rows, acc, input_precision=DOT_PREC)
    else:
        acc = tl.dot(tile, rows, acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def _into_queries(tile, keys, DOT_PREC: tl.constexpr, QUERY_MAJOR: tl.constexpr):
    """tile^(queries, keys) . keys (keys x width)."""
    if QUERY_MAJOR:
        t = tl.dot(tile, keys, input_precision=DOT_PREC)
    else:
        t = tl.dot(tl.trans(tile), keys, input_precision=DOT_PREC)
    return t


@triton.jit
def _sum_over_queries(x, QUERY_MAJOR: tl.constexpr):
    if QUERY_MAJOR:
        y = tl.sum(x, axis=0)
    else:
        y = tl.sum(x, axis=1)
    return y


@triton.jit
def _view_weights(Qh, RQh, sq_t, sq_d, k, rk, tau, keep, scale, p, b, h, m0, offs_m, row_ok, offs_d, d_ok,
                  HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, NORMALIZE: tl.constexpr,
                  P_MODE: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, MASKED: tl.constexpr,
                  QUERY_MAJOR: tl.constexpr, USE_TMA: tl.constexpr):
    """One view's query tile q, its score factors rq and the weights a = max(u, 0)^p with their slope e
    against the held keys. R = rk (x) rq is applied as two broadcasts, never held as a tile (register
    pressure)."""
    q = load_rows(Qh, b, h, m0, offs_m, offs_d, sq_t, sq_d, row_ok, d_ok, True, BLOCK_D != HEAD_D, CAST_F32, BLOCK_M,
                  BLOCK_D, USE_TMA)
    rq = load_inverse_norms(RQh + offs_m, row_ok, scale, NORMALIZE, BLOCK_M)
    u = _score_tile(k, q, DOT_PREC, QUERY_MAJOR)
    if NORMALIZE:
        u = u * _per_key(rk, QUERY_MAJOR)
    u = u * _per_query(rq, QUERY_MAJOR) - _per_query(tau, QUERY_MAJOR)
    if MASKED:
        u = tl.where(keep, u, 0.0)
    a, e = relu_power_and_slope(u, p, P_MODE)
    return q, rq, a, e


@triton.jit
def _view_key_grads(dk, e, da, q, rq_sign, k, rk, DQh, offs_m, row_ok, offs_d, d_ok,
                    HEAD_D: tl.constexpr, NORMALIZE: tl.constexpr, DOT_PREC: tl.constexpr,
                    DQ_ATOMIC: tl.constexpr, QUERY_MAJOR: tl.constexpr):
    """dS' = e dA R (rq_sign: rq, times -lam for view 2) added into dk = sum over queries of dS' q, and
    with DQ_ATOMIC, dq' = sum over keys of dS' k added to the fp32 buffer at DQh."""
    ds = e * da
    if NORMALIZE:
        ds = ds * _per_key(rk, QUERY_MAJOR)
    ds = (ds * _per_query(rq_sign, QUERY_MAJOR)).to(q.dtype)
    dk = _into_keys(ds, q, dk, DOT_PREC, QUERY_MAJOR)
    if DQ_ATOMIC:
        dq = _into_queries(ds, k, DOT_PREC, QUERY_MAJOR)
        tl.atomic_add(tile_ptrs(DQh, offs_m, offs_d, HEAD_D, 1), dq, mask=row_ok[:, None] & d_ok[None, :],
                      sem="relaxed")
    return dk


@triton.jit
def _view1_grads(dk1, acc_beta, e1, da, q1, rq1, k1, rk1, DQ1h, gain, offs_m, row_ok, offs_d, d_ok,
                 HEAD_D: tl.constexpr, NORMALIZE: tl.constexpr, DOT_PREC: tl.constexpr, DQ_ATOMIC: tl.constexpr,
                 BETA_GRAD: tl.constexpr, QUERY_MAJOR: tl.constexpr):
    """View 1's share of dbeta, dK1 (and dQ1 by atomics)."""
    if BETA_GRAD:
        acc_beta += _sum_over_queries(e1 * da * _per_query(gain, QUERY_MAJOR), QUERY_MAJOR)
    dk1 = _view_key_grads(dk1, e1, da, q1, rq1, k1, rk1, DQ1h, offs_m, row_ok, offs_d, d_ok, HEAD_D,
                          NORMALIZE, DOT_PREC, DQ_ATOMIC, QUERY_MAJOR)
    return dk1, acc_beta


@triton.jit
def _view2_grads(dk2, acc_lam, acc_beta, e2, a2, da, q2, rq2, k2, rk2, lam, DQ2h, gain, offs_m, row_ok,
                 offs_d, d_ok, HEAD_D: tl.constexpr, NORMALIZE: tl.constexpr, DOT_PREC: tl.constexpr,
                 DQ_ATOMIC: tl.constexpr, LAM_GRAD: tl.constexpr, BETA_GRAD: tl.constexpr,
                 QUERY_MAJOR: tl.constexpr):
    """View 2's share of dlam, dbeta, dK2 (and dQ2 by atomics); its weights enter with -lam."""
    if LAM_GRAD:
        acc_lam += _sum_over_queries(da * a2, QUERY_MAJOR)
    if BETA_GRAD:
        acc_beta -= lam * _sum_over_queries(e2 * da * _per_query(gain, QUERY_MAJOR), QUERY_MAJOR)
    dk2 = _view_key_grads(dk2, e2, da, q2, rq2 * -lam, k2, rk2, DQ2h, offs_m, row_ok, offs_d, d_ok,
                          HEAD_D, NORMALIZE, DOT_PREC, DQ_ATOMIC, QUERY_MAJOR)
    return dk2, acc_lam, acc_beta


@triton.jit
def _dkdv_query_block(
    dk1, dk2, dv, acc_lam, acc_beta, k1, k2, v, rk1, rk2, lam, beta, p, inv_d, scale,
    Q1h, Q2h, DOh, RQ1h, RQ2h, DQ1h, DQ2h, sq1_t, sq1_d, sq2_t, sq2_d, sdo_t, sdo_d,
    b, h, m0, Tq, Tk, offs_n, offs_d,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, TWO_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr,
    P_MODE: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, DQ_ATOMIC: tl.constexpr,
    LAM_GRAD: tl.constexpr, BETA_GRAD: tl.constexpr, MASKED: tl.constexpr, QUERY_MAJOR: tl.constexpr,
    WITH_DK: tl.constexpr, WITH_DV: tl.constexpr, USE_TMA: tl.constexpr, SKIP_EMPTY: tl.constexpr,
):
    """One query block's contribution to a key block's gradients: dK (with dQ by atomics, dlam, dbeta)
    if WITH_DK, dV if WITH_DV. Score tiles are (keys, queries), or (queries, keys) with QUERY_MAJOR:
    then the held k1, k2, v are the second operand of every product that reads them and dS, W enter
    dK, dV transposed. With SKIP_EMPTY both views' weights come first and the rest (dA included) is
    skipped when none survives; otherwise view 1 is finished before view 2 is scored (fewer live tiles)."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    d_ok = offs_d < HEAD_D
    pos = offs_m + (Tk - Tq)
    gain = threshold_gain(pos, inv_d)
    tau = beta * gain
    offs_dv = tl.arange(0, BLOCK_DV)
    do = load_rows(DOh, b, h, m0, offs_m, offs_dv, sdo_t, sdo_d, row_ok, offs_dv < HEAD_DV, True, BLOCK_DV != HEAD_DV,
                   CAST_F32, BLOCK_M, BLOCK_DV, USE_TMA)
    keep = 0
    if MASKED:
        keep = _per_key(offs_n, QUERY_MAJOR) <= _per_query(pos, QUERY_MAJOR)
    if SKIP_EMPTY:
        q1, rq1, w, e1 = _view_weights(Q1h, RQ1h, sq1_t, sq1_d, k1, rk1, tau, keep, scale, p, b, h, m0, offs_m,
                                       row_ok, offs_d, d_ok, HEAD_D, BLOCK_M, BLOCK_D, NORMALIZE, P_MODE, CAST_F32,
                                       DOT_PREC, MASKED, QUERY_MAJOR, USE_TMA)
        top = tl.max(e1)  # the slope is > 0 exactly where a weight survives
        if TWO_VIEWS:
            q2, rq2, a2, e2 = _view_weights(Q2h, RQ2h, sq2_t, sq2_d, k2, rk2, tau, keep, scale, p, b, h, m0,
                                            offs_m, row_ok, offs_d, d_ok, HEAD_D, BLOCK_M, BLOCK_D, NORMALIZE,
                                            P_MODE, CAST_F32, DOT_PREC, MASKED, QUERY_MAJOR, USE_TMA)
            top = tl.maximum(top, tl.max(e2))
        if top > 0.0:
            if WITH_DK:
                da = _score_tile(v, do, DOT_PREC, QUERY_MAJOR)
                dk1, acc_beta = _view1_grads(dk1, acc_beta, e1, da, q1, rq1, k1, rk1, DQ1h, gain, offs_m,
                                             row_ok, offs_d, d_ok, HEAD_D, NORMALIZE, DOT_PREC, DQ_ATOMIC,
                                             BETA_GRAD, QUERY_MAJOR)
            if TWO_VIEWS:
                w = w - lam * a2
                if WITH_DK:
                    dk2, acc_lam, acc_beta = _view2_grads(
                        dk2, acc_lam, acc_beta, e2, a2, da, q2, rq2, k2, rk2, lam, DQ2h, gain, offs_m,
                        row_ok, offs_d, d_ok, HEAD_D, NORMALIZE, DOT_PREC, DQ_ATOMIC, LAM_GRAD, BETA_GRAD,
                        QUERY_MAJOR)
            if WITH_DV:
                dv = _into_keys(w.to(do.dtype), do, dv, DOT_PREC, QUERY_MAJOR)
    else:
        if WITH_DK:
            da = _score_tile(v, do, DOT_PREC, QUERY_MAJOR)
        q1, rq1, w, e1 = _view_weights(Q1h, RQ1h, sq1_t, sq1_d, k1, rk1, tau, keep, scale, p, b, h, m0, offs_m,
                                       row_ok, offs_d, d_ok, HEAD_D, BLOCK_M, BLOCK_D, NORMALIZE, P_MODE, CAST_F32,
                                       DOT_PREC, MASKED, QUERY_MAJOR, USE_TMA)
        if WITH_DK:
            dk1, acc_beta = _view1_grads(dk1, acc_beta, e1, da, q1, rq1, k1, rk1, DQ1h, gain, offs_m, row_ok,
                                         offs_d, d_ok, HEAD_D, NORMALIZE, DOT_PREC, DQ_ATOMIC, BETA_GRAD,
                                         QUERY_MAJOR)
        if TWO_VIEWS:
            q2, rq2, a2, e2 = _view_weights(Q2h, RQ2h, sq2_t, sq2_d, k2, rk2, tau, keep, scale, p, b, h, m0,
                                            offs_m, row_ok, offs_d, d_ok, HEAD_D, BLOCK_M, BLOCK_D, NORMALIZE,
                                            P_MODE, CAST_F32, DOT_PREC, MASKED, QUERY_MAJOR, USE_TMA)
            w = w - lam * a2
            if WITH_DK:
                dk2, acc_lam, acc_beta = _view2_grads(
                    dk2, acc_lam, acc_beta, e2, a2, da, q2, rq2, k2, rk2, lam, DQ2h, gain, offs_m, row_ok,
                    offs_d, d_ok, HEAD_D, NORMALIZE, DOT_PREC, DQ_ATOMIC, LAM_GRAD, BETA_GRAD, QUERY_MAJOR)
        if WITH_DV:
            dv = _into_keys(w.to(do.dtype), do, dv, DOT_PREC, QUERY_MAJOR)
    return dk1, dk2, dv, acc_lam, acc_beta


@triton.jit
def dkdv_kernel(
    Q1, K1, Q2, K2, V, DO, RQ1, RK1, RQ2, RK2, LAM, BETA,
    DK1, DK2, DV, DQ1ACC, DQ2ACC, LAM_PART, BETA_PART,
    sq1_b, sq1_h, sq1_t, sq1_d, sk1_b, sk1_h, sk1_t, sk1_d,
    sq2_b, sq2_h, sq2_t, sq2_d, sk2_b, sk2_h, sk2_t, sk2_d,
    sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    sdk1_b, sdk1_h, sdk1_t, sdk2_b, sdk2_h, sdk2_t, sdv_b, sdv_h, sdv_t, LIST, COUNTS, list_cap,
    H, GROUP, Tq, Tk, num_bhk, num_n_blocks, scale, p, inv_d,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    TWO_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
    CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, DQ_ATOMIC: tl.constexpr,
    LAM_GRAD: tl.constexpr, BETA_GRAD: tl.constexpr, QUERY_MAJOR: tl.constexpr,
    WITH_DK: tl.constexpr, WITH_DV: tl.constexpr, USE_TMA: tl.constexpr, SKIP_EMPTY: tl.constexpr,
    USE_LIST: tl.constexpr,
):
    """Grid: (num_n_blocks * B * Hkv,). With USE_TMA, Q1, K1, Q2, K2, V, DO are 4-D tensor descriptors
    (blocks of one head's rows) instead of pointers. DK*, DV shaped like K*, V with strides sdk*_*, sdv_* (the last
    dimension contiguous); DQ1ACC, DQ2ACC (B, H, Tq,
    HEAD_D) fp32 zero-filled, used with DQ_ATOMIC (DQ2ACC with two views); LAM_PART, BETA_PART (B, H,
    num_n_blocks) fp32 partial sums (fully written). WITH_DK / WITH_DV: which of DK* (with dQ, dlam,
    dbeta) and DV this launch computes and writes (dV apart needs neither dA nor v). With USE_LIST the query
    tiles visited are those of the key block's list (triton_lists.py, by key block, for this tile: list_cap int32
    entries and two counts per (b, h, key block)) instead of every tile of the causal range: the first counts[0]
    entries with the causal mask, the rest without."""
    pid = tl.program_id(0)
    bhk = pid % num_bhk
    nblk = pid // num_bhk
    n0 = nblk * BLOCK_N
    Hkv = H // GROUP
    b = (bhk // Hkv).to(tl.int64)
    hk = (bhk % Hkv).to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_ok = offs_n < Tk
    d_ok = offs_d < HEAD_D
    dv_ok = offs_dv < HEAD_DV

    K1h = head_base(K1, b, hk, sk1_b, sk1_h, USE_TMA)
    K2h = head_base(K2, b, hk, sk2_b, sk2_h, USE_TMA)
    Vh = head_base(V, b, hk, sv_b, sv_h, USE_TMA)
    k1 = load_rows(K1h, b, hk, n0, offs_n, offs_d, sk1_t, sk1_d, key_ok, d_ok, True, BLOCK_D != HEAD_D, CAST_F32,
                   BLOCK_N, BLOCK_D, USE_TMA)
    if WITH_DK:
        v = load_rows(Vh, b, hk, n0, offs_n, offs_dv, sv_t, sv_d, key_ok, dv_ok, True, BLOCK_DV != HEAD_DV, CAST_F32,
                      BLOCK_N, BLOCK_DV, USE_TMA)
    else:
        v = k1  # not read
    rk1 = tl.load(RK1 + (b * Hkv + hk) * Tk + offs_n, mask=key_ok, other=0.0) if NORMALIZE else 0.0
    dk1 = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    if TWO_VIEWS:
        k2 = load_rows(K2h, b, hk, n0, offs_n, offs_d, sk2_t, sk2_d, key_ok, d_ok, True, BLOCK_D != HEAD_D, CAST_F32,
                       BLOCK_N, BLOCK_D, USE_TMA)
        rk2 = tl.load(RK2 + (b * Hkv + hk) * Tk + offs_n, mask=key_ok, other=0.0) if NORMALIZE else 0.0
        dk2 = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    else:
        k2 = k1
        rk2 = rk1
        dk2 = dk1

    m_end = tl.cdiv(Tq, BLOCK_M) * BLOCK_M
    if CAUSAL:
        # First query row that sees key n0, and the rows from which the whole key block is visible.
        m_lo = (tl.maximum(n0 - (Tk - Tq), 0) // BLOCK_M) * BLOCK_M
        m_mid = tl.cdiv(n0 + BLOCK_N - 1 - (Tk - Tq), BLOCK_M) * BLOCK_M
        m_mid = tl.minimum(tl.maximum(m_mid, m_lo), m_end)
    else:
        m_lo = 0
        m_mid = 0

    for g in range(GROUP):
        h = hk * GROUP + g
        bh = b * H + h
        lam = tl.load(LAM + h) if TWO_VIEWS else 0.0
        beta = tl.load(BETA + h)
        acc_lam = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_beta = tl.zeros([BLOCK_N], dtype=tl.float32)
        Q1h = head_base(Q1, b, h, sq1_b, sq1_h, USE_TMA)
        Q2h = head_base(Q2, b, h, sq2_b, sq2_h, USE_TMA)
        DOh = head_base(DO, b, h, sdo_b, sdo_h, USE_TMA)
        RQ1h = RQ1 + bh * Tq
        RQ2h = RQ2 + bh * Tq
        DQ1h = DQ1ACC + bh * Tq * HEAD_D
        DQ2h = DQ2ACC + bh * Tq * HEAD_D
        if USE_LIST:
            # the occupied tiles only, each a row index loaded in the loop (no data-dependent branch)
            entry = bh * num_n_blocks + nblk
            tiles = LIST + entry * list_cap
            n_masked = tl.load(COUNTS + 2 * entry)
            n_tiles = tl.load(COUNTS + 2 * entry + 1)
            for i in range(0, n_masked):
                m0 = tl.load(tiles + i) * BLOCK_M
                dk1, dk2, dv, acc_lam, acc_beta = _dkdv_query_block(
                    dk1, dk2, dv, acc_lam, acc_beta, k1, k2, v, rk1, rk2, lam, beta, p, inv_d, scale,
                    Q1h, Q2h, DOh, RQ1h, RQ2h, DQ1h, DQ2h, sq1_t, sq1_d, sq2_t, sq2_d, sdo_t, sdo_d,
                    b, h, m0, Tq, Tk, offs_n, offs_d, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_D, BLOCK_DV,
                    TWO_VIEWS, NORMALIZE, P_MODE, CAST_F32, DOT_PREC, DQ_ATOMIC, LAM_GRAD, BETA_GRAD,
                    True, QUERY_MAJOR, WITH_DK, WITH_DV, USE_TMA, SKIP_EMPTY)
            for i in range(n_masked, n_tiles):
                m0 = tl.load(tiles + i) * BLOCK_M
                dk1, dk2, dv, acc_lam, acc_beta = _dkdv_query_block(
                    dk1, dk2, dv, acc_lam, acc_beta, k1, k2, v, rk1, rk2, lam, beta, p, inv_d, scale,
                    Q1h, Q2h, DOh, RQ1h, RQ2h, DQ1h, DQ2h, sq1_t, sq1_d, sq2_t, sq2_d, sdo_t, sdo_d,
                    b, h, m0, Tq, Tk, offs_n, offs_d, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_D, BLOCK_DV,
                    TWO_VIEWS, NORMALIZE, P_MODE, CAST_F32, DOT_PREC, DQ_ATOMIC, LAM_GRAD, BETA_GRAD,
                    False, QUERY_MAJOR, WITH_DK, WITH_DV, USE_TMA, SKIP_EMPTY)
        else:
            for m0 in range(m_lo, m_mid, BLOCK_M):
                dk1, dk2, dv, acc_lam, acc_beta = _dkdv_query_block(
                    dk1, dk2, dv, acc_lam, acc_beta, k1, k2, v, rk1, rk2, lam, beta, p, inv_d, scale,
                    Q1h, Q2h, DOh, RQ1h, RQ2h, DQ1h, DQ2h, sq1_t, sq1_d, sq2_t, sq2_d, sdo_t, sdo_d,
                    b, h, m0, Tq, Tk, offs_n, offs_d, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_D, BLOCK_DV,
                    TWO_VIEWS, NORMALIZE, P_MODE, CAST_F32, DOT_PREC, DQ_ATOMIC, LAM_GRAD, BETA_GRAD,
                    True, QUERY_MAJOR, WITH_DK, WITH_DV, USE_TMA, SKIP_EMPTY)
            for m0 in range(m_mid, m_end, BLOCK_M):
                dk1, dk2, dv, acc_lam, acc_beta = _dkdv_query_block(
                    dk1, dk2, dv, acc_lam, acc_beta, k1, k2, v, rk1, rk2, lam, beta, p, inv_d, scale,
                    Q1h, Q2h, DOh, RQ1h, RQ2h, DQ1h, DQ2h, sq1_t, sq1_d, sq2_t, sq2_d, sdo_t, sdo_d,
                    b, h, m0, Tq, Tk, offs_n, offs_d, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_D, BLOCK_DV,
                    TWO_VIEWS, NORMALIZE, P_MODE, CAST_F32, DOT_PREC, DQ_ATOMIC, LAM_GRAD, BETA_GRAD,
                    False, QUERY_MAJOR, WITH_DK, WITH_DV, USE_TMA, SKIP_EMPTY)
        if LAM_GRAD:
            tl.store(LAM_PART + bh * num_n_blocks + nblk, -tl.sum(acc_lam, axis=0))
        if BETA_GRAD:
            tl.store(BETA_PART + bh * num_n_blocks + nblk,
                     -p * tl.sum(acc_beta, axis=0))

    if WITH_DK:
        store_mask = key_ok[:, None] & d_ok[None, :]
        dk1_off = b * sdk1_b + hk * sdk1_h + offs_n[:, None] * sdk1_t + offs_d[None, :]
        # k is read again for the normalisation's backward rather than kept in registers all along.
        if NORMALIZE:
            k1 = load_rows(K1h, b, hk, n0, offs_n, offs_d, sk1_t, sk1_d, key_ok, d_ok, True, BLOCK_D != HEAD_D, True,
                           BLOCK_N, BLOCK_D, USE_TMA)
        tl.store(DK1 + dk1_off, normalize_backward(dk1, k1, rk1, p, NORMALIZE)
                 .to(DK1.dtype.element_ty), mask=store_mask)
        if TWO_VIEWS:
            if NORMALIZE:
                k2 = load_rows(K2h, b, hk, n0, offs_n, offs_d, sk2_t, sk2_d, key_ok, d_ok, True, BLOCK_D != HEAD_D, True,
                               BLOCK_N, BLOCK_D, USE_TMA)
            dk2_off = b * sdk2_b + hk * sdk2_h + offs_n[:, None] * sdk2_t + offs_d[None, :]
            tl.store(DK2 + dk2_off, normalize_backward(dk2, k2, rk2, p, NORMALIZE)
                     .to(DK2.dtype.element_ty), mask=store_mask)
    if WITH_DV:
        dv_off = b * sdv_b + hk * sdv_h + offs_n[:, None] * sdv_t + offs_dv[None, :]
        tl.store(DV + dv_off, dv.to(DV.dtype.element_ty), mask=key_ok[:, None] & dv_ok[None, :])


@triton.jit
def _dq_key_block(
    dq1, dq2, q1, q2, do, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
    K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d, offs_n, offs_d, offs_dv,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, TWO_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr,
    P_MODE: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, MASKED: tl.constexpr,
    USE_TMA: tl.constexpr, SKIP_EMPTY: tl.constexpr,
):
    """One key block's contribution to dq'1, dq'2 of a query block; tiles are (queries, keys). With
    SKIP_EMPTY, dA and the dQ products are skipped when no weight of the tile survives in either view
    (both views' scores are then computed first)."""
    cols = n0 + offs_n
    key_ok = cols < Tk
    k1, r1, u1 = key_scores(q1, K1h, RK1h, cols, key_ok, offs_d, sk1_t, sk1_d, rq1, tau, pos, b, hk, n0,
                            HEAD_D, BLOCK_D, BLOCK_N, NORMALIZE, CAUSAL, CAST_F32, DOT_PREC, MASKED, USE_TMA)
    v = load_rows(Vh, b, hk, n0, cols, offs_dv, sv_t, sv_d, key_ok, offs_dv < HEAD_DV, MASKED, BLOCK_DV != HEAD_DV,
                  CAST_F32, BLOCK_N, BLOCK_DV, USE_TMA)
    _, e1 = relu_power_and_slope(u1, p, P_MODE)
    if SKIP_EMPTY:
        top = tl.max(u1)
        if TWO_VIEWS:
            k2, r2, u2 = key_scores(q2, K2h, RK2h, cols, key_ok, offs_d, sk2_t, sk2_d, rq2, tau, pos, b, hk, n0,
                                    HEAD_D, BLOCK_D, BLOCK_N, NORMALIZE, CAUSAL, CAST_F32, DOT_PREC, MASKED, USE_TMA)
            top = tl.maximum(top, tl.max(u2))
        if top > 0.0:  # a weight survives iff its u > 0
            da = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
            dq1 = tl.dot((e1 * r1 * da).to(k1.dtype), k1, dq1, input_precision=DOT_PREC)
            if TWO_VIEWS:
                _, e2 = relu_power_and_slope(u2, p, P_MODE)
                dq2 = tl.dot((e2 * r2 * (da * -lam)).to(k2.dtype), k2, dq2, input_precision=DOT_PREC)
    else:
        da = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        dq1 = tl.dot((e1 * r1 * da).to(k1.dtype), k1, dq1, input_precision=DOT_PREC)
        if TWO_VIEWS:
            k2, r2, u2 = key_scores(q2, K2h, RK2h, cols, key_ok, offs_d, sk2_t, sk2_d, rq2, tau, pos, b, hk, n0,
                                    HEAD_D, BLOCK_D, BLOCK_N, NORMALIZE, CAUSAL, CAST_F32, DOT_PREC, MASKED, USE_TMA)
            _, e2 = relu_power_and_slope(u2, p, P_MODE)
            dq2 = tl.dot((e2 * r2 * (da * -lam)).to(k2.dtype), k2, dq2, input_precision=DOT_PREC)
    return dq1, dq2


@triton.jit
def dq_kernel(
    Q1, K1, Q2, K2, V, DO, RQ1, RK1, RQ2, RK2, LAM, BETA, DQ1, DQ2,
    sq1_b, sq1_h, sq1_t, sq1_d, sk1_b, sk1_h, sk1_t, sk1_d,
    sq2_b, sq2_h, sq2_t, sq2_d, sk2_b, sk2_h, sk2_t, sk2_d,
    sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    sdq1_b, sdq1_h, sdq1_t, sdq2_b, sdq2_h, sdq2_t, LIST, COUNTS, list_cap,
    H, GROUP, Tq, Tk, num_bh, num_m_blocks, scale, p, inv_d,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    TWO_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr, P_MODE: tl.constexpr,
    CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr, SKIP_EMPTY: tl.constexpr,
    USE_LIST: tl.constexpr,
):
    """Deterministic dQ. Grid: (num_m_blocks * B * H,), longest first. DQ* (B, H, Tq, HEAD_D) with strides
    sdq*_* (the last dimension contiguous).
    With USE_TMA, Q1, K1, Q2, K2, V, DO are 4-D tensor descriptors (blocks of one head's rows); with
    SKIP_EMPTY, key blocks without a surviving weight skip dA and the dQ products. With USE_LIST the key blocks
    visited are those of the query block's list (triton_lists.py, by query block, for this tile: list_cap int32
    entries and two counts per (b, h, query block)): the first counts[0] entries without the mask, the rest with it."""
    b, h, hk, m0 = query_block_program(num_bh, num_m_blocks, H, GROUP, BLOCK_M)
    Hkv = H // GROUP
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Tq
    d_ok = offs_d < HEAD_D

    Q1h = head_base(Q1, b, h, sq1_b, sq1_h, USE_TMA)
    Q2h = head_base(Q2, b, h, sq2_b, sq2_h, USE_TMA)
    DOh = head_base(DO, b, h, sdo_b, sdo_h, USE_TMA)
    K1h = head_base(K1, b, hk, sk1_b, sk1_h, USE_TMA)
    K2h = head_base(K2, b, hk, sk2_b, sk2_h, USE_TMA)
    Vh = head_base(V, b, hk, sv_b, sv_h, USE_TMA)
    q1 = load_rows(Q1h, b, h, m0, offs_m, offs_d, sq1_t, sq1_d, row_ok, d_ok, True, BLOCK_D != HEAD_D, CAST_F32,
                   BLOCK_M, BLOCK_D, USE_TMA)
    do = load_rows(DOh, b, h, m0, offs_m, offs_dv, sdo_t, sdo_d, row_ok, offs_dv < HEAD_DV, True, BLOCK_DV != HEAD_DV,
                   CAST_F32, BLOCK_M, BLOCK_DV, USE_TMA)
    rq1 = load_inverse_norms(RQ1 + (b * H + h) * Tq + offs_m, row_ok, scale, NORMALIZE, BLOCK_M)
    pos = offs_m + (Tk - Tq)
    tau = tl.load(BETA + h) * threshold_gain(pos, inv_d)
    dq1 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if TWO_VIEWS:
        q2 = load_rows(Q2h, b, h, m0, offs_m, offs_d, sq2_t, sq2_d, row_ok, d_ok, True, BLOCK_D != HEAD_D, CAST_F32,
                       BLOCK_M, BLOCK_D, USE_TMA)
        rq2 = load_inverse_norms(RQ2 + (b * H + h) * Tq + offs_m, row_ok, scale, NORMALIZE, BLOCK_M)
        lam = tl.load(LAM + h)
        dq2 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    else:
        q2 = q1
        rq2 = rq1
        lam = 0.0
        dq2 = dq1

    RK1h = RK1 + (b * Hkv + hk) * Tk
    RK2h = RK2 + (b * Hkv + hk) * Tk
    if USE_LIST:
        # the occupied key blocks only, each an index loaded in the loop (no data-dependent branch)
        entry = (b * H + h) * num_m_blocks + m0 // BLOCK_M
        blocks = LIST + entry * list_cap
        n_full = tl.load(COUNTS + 2 * entry)
        n_blocks = tl.load(COUNTS + 2 * entry + 1)
        for i in range(0, n_full):
            n0 = tl.load(blocks + i) * BLOCK_N
            dq1, dq2 = _dq_key_block(dq1, dq2, q1, q2, do, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
                                     K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d,
                                     offs_n, offs_d, offs_dv, HEAD_D, HEAD_DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                                     TWO_VIEWS, NORMALIZE, CAUSAL, P_MODE, CAST_F32, DOT_PREC, False, USE_TMA,
                                     SKIP_EMPTY)
        for i in range(n_full, n_blocks):
            n0 = tl.load(blocks + i) * BLOCK_N
            dq1, dq2 = _dq_key_block(dq1, dq2, q1, q2, do, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
                                     K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d,
                                     offs_n, offs_d, offs_dv, HEAD_D, HEAD_DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                                     TWO_VIEWS, NORMALIZE, CAUSAL, P_MODE, CAST_F32, DOT_PREC, True, USE_TMA,
                                     SKIP_EMPTY)
    else:
        full_end, hi = visible_keys(m0, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
        for n0 in range(0, full_end, BLOCK_N):
            dq1, dq2 = _dq_key_block(dq1, dq2, q1, q2, do, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
                                     K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d,
                                     offs_n, offs_d, offs_dv, HEAD_D, HEAD_DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                                     TWO_VIEWS, NORMALIZE, CAUSAL, P_MODE, CAST_F32, DOT_PREC, False, USE_TMA,
                                     SKIP_EMPTY)
        for n0 in range(full_end, hi, BLOCK_N):
            dq1, dq2 = _dq_key_block(dq1, dq2, q1, q2, do, rq1, rq2, tau, lam, p, pos, n0, Tk, b, hk,
                                     K1h, K2h, Vh, RK1h, RK2h, sk1_t, sk1_d, sk2_t, sk2_d, sv_t, sv_d,
                                     offs_n, offs_d, offs_dv, HEAD_D, HEAD_DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                                     TWO_VIEWS, NORMALIZE, CAUSAL, P_MODE, CAST_F32, DOT_PREC, True, USE_TMA,
                                     SKIP_EMPTY)

    dq1_off = b * sdq1_b + h * sdq1_h + offs_m[:, None] * sdq1_t + offs_d[None, :]
    store_mask = row_ok[:, None] & d_ok[None, :]
    rq1_raw = load_inverse_norms(RQ1 + (b * H + h) * Tq + offs_m, row_ok, 1.0, NORMALIZE, BLOCK_M)
    tl.store(DQ1 + dq1_off, normalize_backward(dq1, q1.to(tl.float32), rq1_raw, p, NORMALIZE)
             .to(DQ1.dtype.element_ty), mask=store_mask)
    if TWO_VIEWS:
        rq2_raw = load_inverse_norms(RQ2 + (b * H + h) * Tq + offs_m, row_ok, 1.0, NORMALIZE, BLOCK_M)
        dq2_off = b * sdq2_b + h * sdq2_h + offs_m[:, None] * sdq2_t + offs_d[None, :]
        tl.store(DQ2 + dq2_off, normalize_backward(dq2, q2.to(tl.float32), rq2_raw, p, NORMALIZE)
                 .to(DQ2.dtype.element_ty), mask=store_mask)


@triton.jit
def _finish_dq_rows(ACC, Q, RQ, DQ, b, h, bh, m0, sq_b, sq_h, sq_t, sq_d, sdq_b, sdq_h, sdq_t, Tq, p,
                    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, NORMALIZE: tl.constexpr):
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    d_ok = offs_d < HEAD_D
    off = bh * Tq * HEAD_D + offs_m[:, None] * HEAD_D + offs_d[None, :]
    acc = tl.load(ACC + off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q = load_tile(tile_ptrs(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_t, sq_d), row_ok, d_ok, True,
                  BLOCK_D != HEAD_D, True)
    r = load_inverse_norms(RQ + bh * Tq + offs_m, row_ok, 1.0, NORMALIZE, BLOCK_M)
    dq_off = b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_t + offs_d[None, :]
    tl.store(DQ + dq_off, normalize_backward(acc, q, r, p, NORMALIZE).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _finish_dq_views(ACC, Q1, RQ1, DQ1, Q2, RQ2, DQ2, sq1_b, sq1_h, sq1_t, sq1_d, sdq1_b, sdq1_h, sdq1_t,
                     sq2_b, sq2_h, sq2_t, sq2_d, sdq2_b, sdq2_h, sdq2_t, B, H, Tq, num_m_blocks, p, pid,
                     HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, NORMALIZE: tl.constexpr):
    bh = (pid // num_m_blocks).to(tl.int64)
    m0 = (pid % num_m_blocks) * BLOCK_M
    b = bh // H
    h = bh % H
    if tl.program_id(1) == 0:
        _finish_dq_rows(ACC, Q1, RQ1, DQ1, b, h, bh, m0, sq1_b, sq1_h, sq1_t, sq1_d, sdq1_b, sdq1_h, sdq1_t, Tq, p,
                        HEAD_D, BLOCK_M, BLOCK_D, NORMALIZE)
    else:
        _finish_dq_rows(ACC + B * H * Tq * HEAD_D, Q2, RQ2, DQ2, b, h, bh, m0, sq2_b, sq2_h, sq2_t, sq2_d, sdq2_b,
                        sdq2_h, sdq2_t, Tq, p, HEAD_D, BLOCK_M, BLOCK_D, NORMALIZE)


@triton.jit
def _head_sum(P, OUT_LAM, OUT_BETA, first, pid, B, H, NB, BLOCK: tl.constexpr):
    """Program pid = r' * H + h adds row r = first + r' of head h of P (2, B, H, NB) over B and NB in one fixed order
    (the same bits on every run) into OUT_LAM[h] (r = 0) or OUT_BETA[h] (r = 1)."""
    r = first + pid // H
    h = pid % H
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for b in range(B):
        row = P + ((r * B + b) * H + h).to(tl.int64) * NB
        for n0 in range(0, NB, BLOCK):
            acc += tl.load(row + n0 + offs, mask=n0 + offs < NB, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(OUT_LAM + h, total, mask=r == 0)
    tl.store(OUT_BETA + h, total, mask=r == 1)


@triton.jit
def dq_finish_kernel(
    ACC, Q1, RQ1, DQ1, Q2, RQ2, DQ2, sq1_b, sq1_h, sq1_t, sq1_d, sdq1_b, sdq1_h, sdq1_t,
    sq2_b, sq2_h, sq2_t, sq2_d, sdq2_b, sdq2_h, sdq2_t, B, H, Tq, num_m_blocks, p,
    P, OUT_LAM, OUT_BETA, first, NB,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, NORMALIZE: tl.constexpr,
    SUM_BLOCK: tl.constexpr,
):
    """DQv = p (ACCv - r^2 (q . ACCv) q) (or p ACCv) for view v = program_id(1) (one launch for both views).
    ACC fp32 contiguous (views, B, H, Tq, HEAD_D); DQv of shape (B, H, Tq, HEAD_D) with strides sdqv_* (the last
    dimension contiguous). Programs past dQ's B * H * num_m_blocks, when the grid has them, do head_sums_kernel's
    work on the partial sums P (2, B, H, NB) from row ``first`` on, SUM_BLOCK at a step (_head_sum; view 0's, view
    1's do nothing): on the atomic paths dλ and dβ need no launch of their own."""
    pid = tl.program_id(0)
    rows = B * H * num_m_blocks
    if pid < rows:
        _finish_dq_views(ACC, Q1, RQ1, DQ1, Q2, RQ2, DQ2, sq1_b, sq1_h, sq1_t, sq1_d, sdq1_b, sdq1_h, sdq1_t,
                         sq2_b, sq2_h, sq2_t, sq2_d, sdq2_b, sdq2_h, sdq2_t, B, H, Tq, num_m_blocks, p, pid,
                         HEAD_D, BLOCK_M, BLOCK_D, NORMALIZE)
    elif tl.program_id(1) == 0:
        _head_sum(P, OUT_LAM, OUT_BETA, first, pid - rows, B, H, NB, SUM_BLOCK)


@triton.jit
def head_sums_kernel(P, OUT_LAM, OUT_BETA, first, B, H, NB, BLOCK: tl.constexpr):
    """dλ and dβ per head from the backward kernels' partial sums P (2, B, H, NB) fp32 contiguous (row 0 λ's, row 1
    β's), one program per (row asked for, head) (_head_sum): the paths without dq_finish_kernel (the atomic-free dQ
    kernel) take it. One small launch where a torch reduction would cost several times its host time."""
    _head_sum(P, OUT_LAM, OUT_BETA, first, tl.program_id(0), B, H, NB, BLOCK)
