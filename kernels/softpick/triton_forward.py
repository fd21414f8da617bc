"""Triton forward kernel of the row-normalised one-view maps: softpick (MODE = SOFTPICK) and softmax with a sink
logit (MODE = SINK, kernels/sink_softmax/), both with an online normaliser as FlashAttention's softmax.

One program computes BLOCK_M query rows of one head, scores in log2 units (s = x·log2 e, x = scale·q·k), keeping per
row a running shift m, a running normaliser l and the unnormalised output acc; when m grows to m' the old l and acc
are rescaled by α = 2^(m − m'):

    softpick   m starts at 0 (the shift max(row max, 0) of SPEC's overflow-safe form), l at 0
               u_ij = 2^(s_ij − m) − 2^(−m)   (= (e^x_ij − 1)·e^(−m); 0 where the key is not visible)
               l += Σ_j |u_ij| ,  acc += relu(u) · v        (both terms of u scale by α: the rescale is exact)
               o_i = acc / D_i ,  D_i = l + ε·2^(−m)        (= (Σ_j |e^x_ij − 1| + ε)·e^(−m))
    sink       m starts at s_h·log2 e and l at 1: the sink's own term, a key of score s_h and value 0
               p_ij = 2^(s_ij − m) ,  l += Σ_j p_ij ,  acc += p · v ,  o_i = acc / l

Each row also stores L_i = m + log2(D_i) (softpick) or m + log2(l) (sink): 2^(s_ij − L_i) is e^x_ij / N_i, with N_i
the unshifted denominator, which is all the backward needs to rebuild the weights (one ex2 per score, as the
forward). One ex2 per score and a few FMA-unit operations, as softmax. Causal key blocks wholly left of the diagonal
run without the mask, those crossing it with it, those right of it are never visited; the longest query blocks
first.
"""

import triton
import triton.language as tl

from ..score_ops.triton_tiles import load_tile, query_block_program, visible, visible_keys

SOFTPICK = tl.constexpr(0)
SINK = tl.constexpr(1)
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _key_block(acc, m, l, q, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d, offs_dv,
               HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               CAUSAL: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, MODE: tl.constexpr,
               FOLD_SCALE: tl.constexpr, MASKED: tl.constexpr):
    """One key block folded into the row state (acc, m, l). FOLD_SCALE (qk_scale2 > 0): the block's maximum is
    taken on the unscaled scores and scaled once per row (the same value: rounding is monotonic), and the scale
    enters each exponent by the FMA that subtracts the maximum, one operation per score instead of a product and a
    subtraction."""
    cols = n0 + offs_n
    key_ok = cols < Tk
    k = load_tile(Kh, cols, offs_d, sk_t, sk_d, key_ok, offs_d < HEAD_D, MASKED, BLOCK_D != HEAD_D, CAST_F32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    if not FOLD_SCALE:
        s = s * qk_scale2
    keep = key_ok[None, :]
    if MASKED:
        keep = visible(pos, cols, key_ok, CAUSAL)
        s = tl.where(keep, s, float("-inf"))
    if FOLD_SCALE:
        m_new = tl.maximum(m, tl.max(s, 1) * qk_scale2)
        e = tl.exp2(s * qk_scale2 - m_new[:, None])
    else:
        m_new = tl.maximum(m, tl.max(s, 1))
        e = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    if MODE == SOFTPICK:
        u = e - tl.exp2(-m_new)[:, None]
        if MASKED:
            u = tl.where(keep, u, 0.0)
        p = tl.maximum(u, 0.0)
        l = l * alpha + tl.sum(tl.abs(u), 1)
    else:
        p = e
        l = l * alpha + tl.sum(p, 1)
    v = load_tile(Vh, cols, offs_dv, sv_t, sv_d, key_ok, offs_dv < HEAD_DV, MASKED, BLOCK_DV != HEAD_DV, CAST_F32)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
    return acc, m_new, l


@triton.jit
def normalized_fwd_kernel(
    Q, K, V, O, LSE, SINK_LOGIT,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t, so_d,
    H, GROUP, Tq, Tk, num_bh, num_m_blocks, qk_scale2, eps,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr,
    DOT_PREC: tl.constexpr, MODE: tl.constexpr, FOLD_SCALE: tl.constexpr,
):
    """Grid: (num_m_blocks * B * H,). Q (B, H, Tq, HEAD_D), K (B, H // GROUP, Tk, HEAD_D), V (B, H // GROUP, Tk,
    HEAD_DV), O (B, H, Tq, HEAD_DV); LSE (B, H, Tq) fp32 contiguous (output: L_i in log2 units); SINK_LOGIT (H,)
    fp32 (MODE = SINK; not read otherwise); qk_scale2 = scale · log2 e; eps: softpick's ε; FOLD_SCALE only for
    qk_scale2 > 0 (_key_block)."""
    b, h, hk, m0 = query_block_program(num_bh, num_m_blocks, H, GROUP, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Tq
    q = load_tile(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_t, sq_d, row_ok, offs_d < HEAD_D, True,
                  BLOCK_D != HEAD_D, CAST_F32)
    pos = offs_m + (Tk - Tq)
    if MODE == SOFTPICK:
        m = tl.zeros([BLOCK_M], dtype=tl.float32)
        l = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        m = tl.full([BLOCK_M], 0.0, tl.float32) + tl.load(SINK_LOGIT + h) * LOG2E
        l = tl.full([BLOCK_M], 1.0, tl.float32)
    Kh = K + b * sk_b + hk * sk_h
    Vh = V + b * sv_b + hk * sv_h
    full_end, hi = visible_keys(m0, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for n0 in range(0, full_end, BLOCK_N):
        acc, m, l = _key_block(acc, m, l, q, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d,
                               offs_dv, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, MODE, FOLD_SCALE,
                               False)
    for n0 in range(full_end, hi, BLOCK_N):
        acc, m, l = _key_block(acc, m, l, q, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d,
                               offs_dv, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC, MODE, FOLD_SCALE,
                               True)
    if MODE == SOFTPICK:
        den = l + eps * tl.exp2(-m)
    else:
        den = l
    o = acc / den[:, None]
    tl.store(LSE + (b * H + h) * Tq + offs_m, m + tl.log2(den), mask=row_ok)
    o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_dv[None, :] * so_d
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv < HEAD_DV)[None, :])
