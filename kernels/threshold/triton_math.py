"""Device helpers shared by the threshold-attention Triton kernels.

Everything here is a ``@triton.jit`` function that the kernels inline: tile loads with optional
bounds checks, the threshold tau_i of SPEC §1, the rectified power max(u, 0)^p with its slope,
and the backward of the L2 normalisation. Scores, thresholds and powers are always fp32.
"""

import triton
import triton.language as tl

# q / max(||q||, NORM_EPS): torch.nn.functional.normalize's default guard against zero vectors.
NORM_EPS = tl.constexpr(1e-12)


@triton.jit
def tile_ptrs(base, rows, cols, s_row, s_col):
    """Pointers base + rows[:, None] * s_row + cols[None, :] * s_col. Built where a tile is loaded,
    so no loop-invariant offset tile stays in registers across a loop."""
    return base + rows[:, None] * s_row + cols[None, :] * s_col


@triton.jit
def load_tile(ptrs, row_ok, col_ok, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr,
              CAST_F32: tl.constexpr):
    """Load a 2-D tile; rows/columns failing their check read as 0. Cast to fp32 if asked."""
    if CHECK_ROWS:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    else:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=col_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs)
    if CAST_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def head_base(src, b, h, s_b, s_h, USE_TMA: tl.constexpr):
    """What load_rows reads one head's rows from: the tensor descriptor itself with USE_TMA (it is
    indexed by (b, h) at each load), else the pointer to head (b, h)'s row 0."""
    if USE_TMA:
        base = src
    else:
        base = src + b * s_b + h * s_h
    return base


@triton.jit
def load_rows(src, b, h, row0, rows, cols, s_t, s_d, row_ok, col_ok, CHECK_ROWS: tl.constexpr,
              CHECK_COLS: tl.constexpr, CAST_F32: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
              USE_TMA: tl.constexpr):
    """Rows row0 .. row0 + BLOCK_ROWS of one head's (T, width) matrix. With USE_TMA ``src`` is a 4-D
    tensor descriptor of the whole (B, H, T, width) tensor, read by the copy engine at (b, h) (rows and
    columns past the end read as 0); otherwise ``src`` points at the head's row 0 and ``rows``/``cols``
    are gathered with bounds checks."""
    if USE_TMA:
        x = src.load([b.to(tl.int32), h.to(tl.int32), row0, 0]).reshape([BLOCK_ROWS, BLOCK_COLS])
        if CAST_F32:
            x = x.to(tl.float32)
    else:
        x = load_tile(tile_ptrs(src, rows, cols, s_t, s_d), row_ok, col_ok, CHECK_ROWS, CHECK_COLS, CAST_F32)
    return x


@triton.jit
def inverse_row_norms(x):
    """1 / max(||x_i||, eps) for each row of a tile (fp32 result)."""
    xf = x.to(tl.float32)
    return 1.0 / tl.maximum(tl.sqrt(tl.sum(xf * xf, axis=1)), NORM_EPS)


@triton.jit
def load_inverse_norms(ptrs, ok, scale, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    """Per-row score factor: scale / max(||x||, eps) when normalising (0 outside ``ok``), else scale."""
    if NORMALIZE:
        r = tl.load(ptrs, mask=ok, other=0.0) * scale
    else:
        r = tl.full([BLOCK], scale, tl.float32)
    return r


@triton.jit
def key_scores(q, Kh, RKh, cols, key_ok, offs_d, s_t, s_d, rq, tau, pos, b, hk, n0,
               HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, NORMALIZE: tl.constexpr,
               CAUSAL: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, MASKED: tl.constexpr,
               USE_TMA: tl.constexpr):
    """One key tile of one view against a query tile (queries x keys): returns (k, r, u), k the loaded
    keys (rows n0.. of key head hk; through a descriptor with USE_TMA, see load_rows), r the per-element
    score factor (rq, times the keys' inverse norms with NORMALIZE) and u = q.k * r - tau, zero where
    the key is out of range or (CAUSAL) after the query (with MASKED)."""
    k = load_rows(Kh, b, hk, n0, cols, offs_d, s_t, s_d, key_ok, offs_d < HEAD_D, MASKED, BLOCK_D != HEAD_D,
                  CAST_F32, BLOCK_N, BLOCK_D, USE_TMA)
    r = rq[:, None]
    if NORMALIZE:
        r = r * tl.load(RKh + cols, mask=key_ok, other=0.0)[None, :]
    u = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * r - tau[:, None]
    if MASKED:
        keep = key_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= pos[:, None])
        u = tl.where(keep, u, 0.0)
    return k, r, u


@triton.jit
def query_block_program(num_bh, num_m_blocks, H, GROUP, BLOCK_M: tl.constexpr):
    """This program's query block in a (num_m_blocks * B * H,) grid: longest (last) query blocks first, the
    heads of one block adjacent. Returns (b, h, hk, m0): batch, query head, its key/value head h // GROUP
    (all int64, for offsets) and the block's first row."""
    pid = tl.program_id(0)
    bh = pid % num_bh
    m0 = (num_m_blocks - 1 - pid // num_bh) * BLOCK_M
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = (h // GROUP).to(tl.int64)
    return b, h.to(tl.int64), hk, m0


@triton.jit
def visible_keys(m0, Tq, Tk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """For the query block starting at row m0 (rows aligned to the end of the keys): (full_end, hi).
    Key blocks before full_end lie whole inside the keys and are seen whole by every row of the block (no mask);
    those in [full_end, hi) need the mask; keys from hi on are seen by no row."""
    if CAUSAL:
        # keys the block sees: j <= pos of its last row (and j < Tk)
        hi = tl.minimum(m0 + BLOCK_M + Tk - Tq, Tk)
        # whole blocks end at or before the first row's position
        full_end = tl.minimum(((m0 + Tk - Tq + 1) // BLOCK_N) * BLOCK_N, hi)
    else:
        hi = Tk
        full_end = (Tk // BLOCK_N) * BLOCK_N
    return full_end, hi


@triton.jit
def threshold_gain(pos, inv_d):
    """g_i = sqrt(2 ln(i + 1) / d) for absolute positions ``pos`` (int); tau_i = beta * g_i."""
    return tl.sqrt(2.0 * tl.log((pos + 1).to(tl.float32)) * inv_d)


@triton.jit
def relu_power(u, p, P_MODE: tl.constexpr):
    """max(u, 0)^p elementwise. P_MODE 1 and 2 are the p = 1, p = 2 fast paths; 0 is any real p >= 1."""
    up = tl.maximum(u, 0.0)
    if P_MODE == 1:
        a = up
    elif P_MODE == 2:
        a = up * up
    else:
        pos = u > 0.0
        a = tl.where(pos, tl.exp2(p * tl.log2(tl.where(pos, u, 1.0))), 0.0)
    return a


@triton.jit
def relu_power_and_slope(u, p, P_MODE: tl.constexpr):
    """(max(u,0)^p, max(u,0)^(p-1)) with the slope's 0^0 taken as 0 (so p = 1 gives 1[u > 0]).

    The slope lacks the factor p, which the kernels apply once to the finished gradients.
    """
    up = tl.maximum(u, 0.0)
    if P_MODE == 1:
        a = up
        e = tl.where(u > 0.0, 1.0, 0.0)
    elif P_MODE == 2:
        a = up * up
        e = up
    else:
        pos = u > 0.0
        e = tl.where(pos, tl.exp2((p - 1.0) * tl.log2(tl.where(pos, u, 1.0))), 0.0)
        a = e * up
    return a, e


@triton.jit
def normalize_backward(g, x, r, factor, NORMALIZE: tl.constexpr):
    """Gradient w.r.t. raw rows x from the accumulated g = sum_j dS'_ij y_j (fp32 tiles).

    With x_hat = x * r, r = 1 / max(||x||, eps), and the kernels' dS' that already carries r:
    dx = factor * (g - r^2 (x . g) x), the projection dropped for rows whose norm is below eps
    (as torch.nn.functional.normalize). Without normalisation: dx = factor * g.
    """
    if NORMALIZE:
        proj = tl.where(r * NORM_EPS < 1.0, r * r, 0.0) * tl.sum(x * g, axis=1)
        g = g - proj[:, None] * x
    return g * factor
