"""Triton forward kernel of sigmoid attention, and the sigmoid it evaluates.

One program computes BLOCK_M query rows of one head:

    z_ij = s_ij · (scale·log2 e) + b_h·log2 e      s = q·k on the tensor cores, fp32 accumulate (z in log2 units)
    w_ij = σ = 1 / (1 + 2^(−z_ij))                   0 outside the causal mask
    o_i  = Σ_j w_ij v_j                              one product with v, w rounded to v's dtype

There is no row state (no maximum, no sum, no rescale, no final division): a key block's weights are final as soon
as they are scored. Key blocks wholly left of the diagonal run without the mask, those crossing it with it, those
right of it are never visited; the longest query blocks are launched first.
"""

import triton
import triton.language as tl

from ..common import interpreting
from ..score_ops.triton_tiles import load_tile, query_block_program, visible, visible_keys

# 1 / (1 + t) on t ∈ [0, 1] by its degree-4 minimax polynomial for the relative error (≤ 2.97e-4), Horner's rule
RCP_C0 = tl.constexpr(0.9997027010)
RCP_C1 = tl.constexpr(-0.9848355328)
RCP_C2 = tl.constexpr(0.8658950972)
RCP_C3 = tl.constexpr(-0.5328590595)
RCP_C4 = tl.constexpr(0.1522454437)

# On a GPU t = 2^(−|z|) is one asm block: ptxas then folds the negation and the absolute value into the ex2's operand
# (MUFU.EX2 R, −|R|), where tl.exp2(-tl.abs(z)) issues an FADD per score before it; same result (ex2.approx.ftz is
# what tl.exp2 emits). The interpreter runs no PTX.
NATIVE_EX2 = tl.constexpr(not interpreting())
EX2_OF_MINUS_ABS = tl.constexpr("{ .reg .f32 a; abs.f32 a, $1; neg.f32 a, a; ex2.approx.ftz.f32 $0, a; }")  # Gluon too


@triton.jit
def exp2_of_minus_abs(z):
    """2^(−|z|), elementwise, fp32."""
    if NATIVE_EX2:
        return tl.inline_asm_elementwise(EX2_OF_MINUS_ABS, "=f,f", [z], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.exp2(-tl.abs(z))


@triton.jit
def sigmoid_exp2(z, SIGMOID_MODE: tl.constexpr):
    """(σ, σ(1 − σ)) of z given in log2 units (σ = 1 / (1 + 2^(−z))), elementwise, fp32.

    SIGMOID_MODE 0: 1 / (1 + 2^(−z)) by division (two special-function operations: ex2 and a reciprocal).
    SIGMOID_MODE n ≥ 1: one ex2, the rest on the FMA units. With t = 2^(−|z|) ∈ (0, 1] and r = 1 / (1 + t),
    σ = r for z ≥ 0 and t·r for z < 0 (relatively exact for tiny weights, where 1 − r would cancel), and
    σ(1 − σ) = t·r² for either sign. r is the degree-4 minimax polynomial in t (four FMAs, relative error ≤ 3.0e-4),
    then n − 1 Newton steps r ← r + r(1 − (1 + t)r), each squaring the relative error (one step: fp32 rounding).
    """
    if SIGMOID_MODE == 0:
        w = 1.0 / (1.0 + tl.exp2(-z))
        slope = w * (1.0 - w)
    else:
        t = exp2_of_minus_abs(z)
        r = (((RCP_C4 * t + RCP_C3) * t + RCP_C2) * t + RCP_C1) * t + RCP_C0
        if SIGMOID_MODE > 1:
            x = 1.0 + t
            for _ in tl.static_range(SIGMOID_MODE - 1):
                r = r + r * (1.0 - x * r)
        tr = t * r
        w = tl.where(z >= 0.0, r, tr)
        slope = tr * r
    return w, slope


@triton.jit
def _key_block(acc, q, bias2, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d, offs_dv,
               HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr,
               DOT_PREC: tl.constexpr, SIGMOID_MODE: tl.constexpr, FOLD_BIAS: tl.constexpr, MASKED: tl.constexpr):
    """acc (BLOCK_M × BLOCK_DV, fp32) + W·v for one key block. With FOLD_BIAS, q arrives scaled by scale·log2 e
    and the bias is the product's initial accumulator."""
    cols = n0 + offs_n
    key_ok = cols < Tk
    k = load_tile(Kh, cols, offs_d, sk_t, sk_d, key_ok, offs_d < HEAD_D, MASKED, BLOCK_D != HEAD_D, CAST_F32)
    if FOLD_BIAS:
        z = tl.dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32) + bias2, input_precision=DOT_PREC)
    else:
        z = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2 + bias2
    w, _ = sigmoid_exp2(z, SIGMOID_MODE)
    if MASKED:
        w = tl.where(visible(pos, cols, key_ok, CAUSAL), w, 0.0)
    v = load_tile(Vh, cols, offs_dv, sv_t, sv_d, key_ok, offs_dv < HEAD_DV, MASKED, BLOCK_DV != HEAD_DV, CAST_F32)
    return tl.dot(w.to(v.dtype), v, acc, input_precision=DOT_PREC)


@triton.jit
def sigmoid_fwd_kernel(
    Q, K, V, O, BIAS,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t, so_d,
    H, GROUP, Tq, Tk, num_bh, num_m_blocks, qk_scale2,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, CAST_F32: tl.constexpr,
    DOT_PREC: tl.constexpr, SIGMOID_MODE: tl.constexpr, FOLD_BIAS: tl.constexpr,
):
    """Grid: (num_m_blocks * B * H,). Q (B, H, Tq, HEAD_D), K (B, H // GROUP, Tk, HEAD_D), V (B, H // GROUP, Tk,
    HEAD_DV), O (B, H, Tq, HEAD_DV); BIAS (H,) fp32; qk_scale2 = scale · log2 e. FOLD_BIAS: q is scaled by qk_scale2
    once (and rounded to its dtype) and the bias starts each score tile's accumulator, instead of one multiply-add
    per score."""
    b, h, hk, m0 = query_block_program(num_bh, num_m_blocks, H, GROUP, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Tq
    q = load_tile(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_t, sq_d, row_ok, offs_d < HEAD_D, True,
                  BLOCK_D != HEAD_D, CAST_F32)
    if FOLD_BIAS:
        q = (q.to(tl.float32) * qk_scale2).to(q.dtype)
    bias2 = tl.load(BIAS + h) * 1.4426950408889634
    pos = offs_m + (Tk - Tq)
    Kh = K + b * sk_b + hk * sk_h
    Vh = V + b * sv_b + hk * sv_h
    full_end, hi = visible_keys(m0, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for n0 in range(0, full_end, BLOCK_N):
        acc = _key_block(acc, q, bias2, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d,
                         offs_dv, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC,
                         SIGMOID_MODE, FOLD_BIAS, False)
    for n0 in range(full_end, hi, BLOCK_N):
        acc = _key_block(acc, q, bias2, qk_scale2, pos, n0, Tk, Kh, Vh, sk_t, sk_d, sv_t, sv_d, offs_n, offs_d,
                         offs_dv, HEAD_D, HEAD_DV, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, CAUSAL, CAST_F32, DOT_PREC,
                         SIGMOID_MODE, FOLD_BIAS, True)
    o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_dv[None, :] * so_d
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv < HEAD_DV)[None, :])
