"""Triton backward kernels of softpick and of softmax with a sink logit (MODE as in triton_forward.py).

With E_ij = 2^(s_ij − L_i) = e^x_ij / N_i (s = x·log2 e; L from the forward), dW = dO·vᵀ and Δ_i = Σ_j dW_ij w_ij =
dO_i · o_i (the sink's value is 0, so it adds nothing to o or Δ):

    softpick   w_ij = relu(E_ij − 2^(−L_i))   (= relu(e^x − 1) / N)
               dX_ij = E_ij · (dW_ij · 1[x_ij > 0] − sign(x_ij) · Δ_i)
               (from ∂w_j/∂x_k = δ_jk 1[x_j > 0] e^x_j / N − relu(e^x_j − 1) sign(x_k) e^x_k / N²)
    sink       w_ij = E_ij ,  dX_ij = E_ij · (dW_ij − Δ_i)          (softmax's rule; the sink is one more key)
               ds_h = −Σ_{b,i} 2^(s_h·log2 e − L_i) · Δ_i            (the sink's dX: its dW is 0)

then dV_j = Σ_i w_ij dO_i, dK_j = scale Σ_i dX_ij q_i, dQ_i = scale Σ_j dX_ij k_j: five products per tile pair and one
ex2 per score, as FlashAttention's backward.

The Δ_i inside dX comes from the output as stored (its weights rounded before the product with v, the result rounded
to the input dtype), as in FlashAttention, and dQ, dK are accurate with it. ds_h does not take that Δ: ds_h sums terms
of random sign over every row and can come out far smaller than their typical size, and then the rounding of o is a
large error relative to ds_h (the bf16 test at T = 8192 draws such a ds_h: from the stored o, and even from o before
its final rounding, it missed the float64 value by more than the bf16 bound). So ds_h uses Δ_i = Σ_j E_ij dW_ij,
summed in the dK/dV kernel from the fp32 E and dW it already has for dX: the same quantity without the output's
rounding.

* ``row_delta_kernel``: Δ_i = dO_i · o_i (fp32, from the output as stored), for dX.
* ``normalized_dkdv_kernel``: one program per key block and key/value head holds k, v, dK, dV over the query blocks
  of every query head of its group; tiles (queries, keys); with DQ_ATOMIC it adds dQ/scale into an fp32 buffer with
  atomics (finished by score_ops.triton_tiles.dq_finish_kernel); with SINK_GRAD it writes its key block's share of every ds_h
  of its group, −Σ_i 2^(s_h·log2 e − L_i) Σ_{j in the block} E_ij dW_ij, which the host sums in a fixed order.
* ``normalized_dq_kernel``: dQ with one program per query block and no atomics (the deterministic path).
"""

import triton
import triton.language as tl

from ..score_ops.triton_tiles import key_block_program, load_tile, query_block_program, visible, visible_keys, visible_queries
from .triton_forward import LOG2E, SOFTPICK


@triton.jit
def row_delta_kernel(O, DO, DELTA, so_b, so_h, so_t, so_d, sdo_b, sdo_h, sdo_t, sdo_d, H, Tq, num_m_blocks,
                     HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Grid: (B * H * num_m_blocks,). DELTA (B, H, Tq) fp32 contiguous: Δ_i = dO_i · o_i from the output as stored."""
    pid = tl.program_id(0)
    bh = (pid // num_m_blocks).to(tl.int64)
    mblk = pid % num_m_blocks
    b = bh // H
    h = bh % H
    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Tq
    dv_ok = offs_dv < HEAD_DV
    o = load_tile(O + b * so_b + h * so_h, offs_m, offs_dv, so_t, so_d, row_ok, dv_ok, True, BLOCK_DV != HEAD_DV, True)
    do = load_tile(DO + b * sdo_b + h * sdo_h, offs_m, offs_dv, sdo_t, sdo_d, row_ok, dv_ok, True, BLOCK_DV != HEAD_DV,
                   True)
    tl.store(DELTA + bh * Tq + offs_m, tl.sum(o * do, axis=1), mask=row_ok)


@triton.jit
def _weights(q, k, lse, qk_scale2, keep, DOT_PREC: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr):
    """(s, E, w) of a (queries, keys) tile: scores in log2 units, e^x / N and the weights (0 where not visible;
    rows past Tq carry L = +inf, so E = w = 0 there)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2
    e = tl.exp2(s - lse[:, None])
    if MASKED:
        e = tl.where(keep, e, 0.0)
    if MODE == SOFTPICK:
        w = tl.maximum(e - tl.exp2(-lse)[:, None], 0.0)
    else:
        w = e
    return s, e, w


@triton.jit
def _score_grad(s, e, dw, delta, MODE: tl.constexpr):
    """dX from dW (see the module docstring)."""
    if MODE == SOFTPICK:
        dx = e * tl.where(s > 0.0, dw - delta[:, None], tl.where(s < 0.0, delta[:, None], 0.0))
    else:
        dx = e * (dw - delta[:, None])
    return dx


@triton.jit
def _dkdv_query_block(
    dk, dv, ds_keys, k, v, qk_scale2, sink2, Qh, DOh, LSEh, DELTAh, DQh, sq_t, sq_d, sdo_t, sdo_d, m0, Tq, Tk, offs_n,
    key_ok, offs_d, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
    MODE: tl.constexpr, DQ_ATOMIC: tl.constexpr, MASKED: tl.constexpr, SINK_GRAD: tl.constexpr,
):
    """One query block's share of a key block's dK, dV (and its dQ by atomics). Keys past Tk load k = v = 0: their
    dK, dV rows are never stored, their dQ terms are products with k = 0 and their dW is 0. With SINK_GRAD, adds
    Σ_i 2^(sink2 − L_i) E_ij dW_ij to ds_keys[j], a per-key running sum over the query blocks (summed over the keys,
    this key block's share of Σ_i p_sink,i Δ_i, from the fp32 weights and dW); rows past Tq add 0 (L = +inf). The
    sum runs along the query axis, into a vector over the program's fixed keys, which costs the kernel fewer
    registers than a per-row sum carried across query blocks."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    offs_dv = tl.arange(0, BLOCK_DV)
    q = load_tile(Qh, offs_m, offs_d, sq_t, sq_d, row_ok, offs_d < HEAD_D, True, BLOCK_D != HEAD_D, CAST_F32)
    do = load_tile(DOh, offs_m, offs_dv, sdo_t, sdo_d, row_ok, offs_dv < HEAD_DV, True, BLOCK_DV != HEAD_DV,
                   CAST_F32)
    lse = tl.load(LSEh + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTAh + offs_m, mask=row_ok, other=0.0)
    keep = key_ok[None, :]
    if MASKED:
        keep = visible(offs_m + (Tk - Tq), offs_n, key_ok, CAUSAL)
    s, e, w = _weights(q, k, lse, qk_scale2, keep, DOT_PREC, MODE, MASKED)
    dv = tl.dot(tl.trans(w.to(do.dtype)), do, dv, input_precision=DOT_PREC)
    dw = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    if SINK_GRAD:
        ds_keys += tl.sum((e * tl.exp2(sink2 - lse)[:, None]) * dw, 0)
    dx = _score_grad(s, e, dw, delta, MODE).to(q.dtype)
    dk = tl.dot(tl.trans(dx), q, dk, input_precision=DOT_PREC)
    if DQ_ATOMIC:
        dq = tl.dot(dx, k, input_precision=DOT_PREC)
        tl.atomic_add(DQh + offs_m[:, None] * HEAD_D + offs_d[None, :], dq,
                      mask=row_ok[:, None] & (offs_d < HEAD_D)[None, :], sem="relaxed")
    return dk, dv, ds_keys


@triton.jit
def normalized_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQACC, SINK_LOGIT, SINK_PART,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t,
    H, GROUP, Tq, Tk, num_bhk, qk_scale2, scale,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr,
    DOT_PREC: tl.constexpr, MODE: tl.constexpr, DQ_ATOMIC: tl.constexpr, SINK_GRAD: tl.constexpr,
):
    """Grid: (num_n_blocks * B * Hkv,). LSE, DELTA (B, H, Tq) fp32 contiguous; DK, DV shaped like K, V (strides
    sdk_*, sdv_*, last dimension contiguous); DQACC fp32 zero-filled contiguous (B, H, Tq, HEAD_D) with DQ_ATOMIC.
    With SINK_GRAD: SINK_LOGIT (H,) fp32, and SINK_PART (B, H, num_n_blocks) fp32 contiguous gets, for every query
    head of the group, this key block's share of ds_h, −Σ_i 2^(s_h·log2 e − L_i) Σ_j E_ij dW_ij over its keys j (the
    host sums the shares in a fixed order)."""
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
        Qh = Q + b * sq_b + h * sq_h
        DOh = DO + b * sdo_b + h * sdo_h
        ds_keys = tl.zeros([BLOCK_N], dtype=tl.float32)
        sink2 = 0.0
        if SINK_GRAD:
            sink2 = tl.load(SINK_LOGIT + h) * LOG2E
        for m0 in range(m_lo, m_mid, BLOCK_M):
            dk, dv, ds_keys = _dkdv_query_block(
                dk, dv, ds_keys, k, v, qk_scale2, sink2, Qh, DOh, LSE + bh * Tq, DELTA + bh * Tq,
                DQACC + bh * Tq * HEAD_D, sq_t, sq_d, sdo_t, sdo_d, m0, Tq, Tk, offs_n, key_ok, offs_d, HEAD_D,
                HEAD_DV, BLOCK_M, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, MODE, DQ_ATOMIC, True, SINK_GRAD)
        for m0 in range(m_mid, m_end, BLOCK_M):
            dk, dv, ds_keys = _dkdv_query_block(
                dk, dv, ds_keys, k, v, qk_scale2, sink2, Qh, DOh, LSE + bh * Tq, DELTA + bh * Tq,
                DQACC + bh * Tq * HEAD_D, sq_t, sq_d, sdo_t, sdo_d, m0, Tq, Tk, offs_n, key_ok, offs_d, HEAD_D,
                HEAD_DV, BLOCK_M, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, MODE, DQ_ATOMIC, False, SINK_GRAD)
        if SINK_GRAD:
            tl.store(SINK_PART + bh * tl.cdiv(Tk, BLOCK_N) + nblk, -tl.sum(ds_keys, 0))
    tl.store(DK + b * sdk_b + hk * sdk_h + offs_n[:, None] * sdk_t + offs_d[None, :],
             (dk * scale).to(DK.dtype.element_ty), mask=key_ok[:, None] & (offs_d < HEAD_D)[None, :])
    tl.store(DV + b * sdv_b + hk * sdv_h + offs_n[:, None] * sdv_t + offs_dv[None, :],
             dv.to(DV.dtype.element_ty), mask=key_ok[:, None] & (offs_dv < HEAD_DV)[None, :])


@triton.jit
def _dq_key_block(dq, q, do, lse, delta, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d,
                  offs_dv, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
                  MODE: tl.constexpr, MASKED: tl.constexpr):
    cols = n0 + offs_n
    key_ok = cols < Tk
    k = load_tile(Kh, cols, offs_d, sk_t, sk_d, key_ok, offs_d < HEAD_D, MASKED, BLOCK_D != HEAD_D, CAST_F32)
    v = load_tile(Vh, cols, offs_dv, sv_t, sv_d, key_ok, offs_dv < HEAD_DV, MASKED, BLOCK_DV != HEAD_DV, CAST_F32)
    keep = key_ok[None, :]
    if MASKED:
        keep = visible(pos, cols, key_ok, CAUSAL)
    s, e, _ = _weights(q, k, lse, qk_scale2, keep, DOT_PREC, MODE, MASKED)
    dw = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    dx = _score_grad(s, e, dw, delta, MODE)
    return tl.dot(dx.to(k.dtype), k, dq, input_precision=DOT_PREC)


@triton.jit
def normalized_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    sdq_b, sdq_h, sdq_t,
    H, GROUP, Tq, Tk, num_bh, num_m_blocks, qk_scale2, scale,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr,
    DOT_PREC: tl.constexpr, MODE: tl.constexpr,
):
    """Deterministic dQ. Grid: (num_m_blocks * B * H,), longest first. DQ (B, H, Tq, HEAD_D), strides sdq_*."""
    b, h, hk, m0 = query_block_program(num_bh, num_m_blocks, H, GROUP, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Tq
    bh = b * H + h
    q = load_tile(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_t, sq_d, row_ok, offs_d < HEAD_D, True,
                  BLOCK_D != HEAD_D, CAST_F32)
    do = load_tile(DO + b * sdo_b + h * sdo_h, offs_m, offs_dv, sdo_t, sdo_d, row_ok, offs_dv < HEAD_DV, True,
                   BLOCK_DV != HEAD_DV, CAST_F32)
    lse = tl.load(LSE + bh * Tq + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * Tq + offs_m, mask=row_ok, other=0.0)
    pos = offs_m + (Tk - Tq)
    Kh = K + b * sk_b + hk * sk_h
    Vh = V + b * sv_b + hk * sv_h
    full_end, hi = visible_keys(m0, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, full_end, BLOCK_N):
        dq = _dq_key_block(dq, q, do, lse, delta, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n,
                           offs_d, offs_dv, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, MODE,
                           False)
    for n0 in range(full_end, hi, BLOCK_N):
        dq = _dq_key_block(dq, q, do, lse, delta, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n,
                           offs_d, offs_dv, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, MODE,
                           True)
    tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_t + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d < HEAD_D)[None, :])
