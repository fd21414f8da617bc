"""Triton kernels of one decoding step: one query row per (sequence, head) against a key/value cache.

The cache is read in pages of PAGE consecutive key positions; the grid is (batch·head, split), each program
owning ``pages_per_split`` consecutive pages and writing one fp32 partial result, which ``combine_kernel`` sums
(a second, tiny launch, no atomics, so the result is the same bits on every run). A threshold split without a live
page has the partial 0: it writes only that fact, and the combine reads only the other splits' partials, so with a
trained model's few survivors the combine reads almost nothing. (Combining in the partial launch instead — the
last program of each row, found by per-row ticket counters, sums the partials — was measured slower on an H200 at
batch 1 and 16 and is not kept: BENCHMARKS.md, "Decoding".)

- ``threshold_partial_kernel`` (TDA, TRA, ReLA): per page it scores the keys of every view against the query's
  threshold τ at the query's own position, and reads the page's values only if some score survives (a branch on
  it: a page without a survivor costs its keys and their scores only, neither the value bytes nor the product with
  them and its sum across warps). The partials are plain sums, since the
  rectified weights need no normalisation.
- ``softmax_partial_kernel``: the same pages with an online softmax (running maximum and sum in base 2); the
  combine rescales each split by 2^(m_s − M) and may add a sink logit to the denominator.

Both partial kernels loop over their pages with ``tl.range(..., num_stages=STAGES)``: with STAGES > 1 Triton's
software pipeliner issues the loads of later pages while the current one is scored (a page's keys do not depend on
the one before), so one program keeps several pages' bytes in flight; with 1 every page waits for its own loads.

Everything is computed in fp32 from tiles cast after loading (exact under Triton's interpreter as well, where
bf16 arithmetic is wrong); there is no tensor-core product (one query row), so fp32 costs nothing here.
"""

import triton
import triton.language as tl

from kernels.threshold.triton_math import NORM_EPS, relu_power, threshold_gain

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _program(H, GROUP, POS, L):
    """(b, h, hk, n_keys) of this program: batch row, query head, its key/value head (int64 for offsets) and the
    number of keys the row's query sees (its position + 1, at most the cache's L positions)."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // GROUP
    pos = tl.load(POS + b).to(tl.int64)
    n_keys = tl.minimum(pos + 1, L)
    return b, h, hk, pos, n_keys


@triton.jit
def _query(Q, b, h, s_b, s_h, s_d, offs_d, factor, HEAD_D: tl.constexpr, NORMALIZE: tl.constexpr):
    """One query row (fp32), L2-normalised when asked, times ``factor``."""
    q = tl.load(Q + b * s_b + h * s_h + offs_d * s_d, mask=offs_d < HEAD_D, other=0.0).to(tl.float32)
    if NORMALIZE:
        q = q * (1.0 / tl.maximum(tl.sqrt(tl.sum(q * q, axis=0)), NORM_EPS))
    return q * factor


@triton.jit
def _scores(K, b, hk, s_b, s_h, s_t, s_d, keys, key_ok, offs_d, q, HEAD_D: tl.constexpr, NORMALIZE: tl.constexpr):
    """q·k_j for the page's keys (fp32), each key L2-normalised when asked; 0 for keys outside ``key_ok``."""
    k = tl.load(K + b * s_b + hk * s_h + keys[:, None] * s_t + offs_d[None, :] * s_d,
                mask=key_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0).to(tl.float32)
    s = tl.sum(k * q[None, :], axis=1)
    if NORMALIZE:
        s = s * (1.0 / tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), NORM_EPS))
    return s


@triton.jit
def _values(V, b, hk, s_b, s_h, s_t, s_d, keys, read, offs_v, HEAD_DV: tl.constexpr):
    """The page's values (fp32) where ``read``; nothing is read (and 0 returned) elsewhere."""
    return tl.load(V + b * s_b + hk * s_h + keys[:, None] * s_t + offs_v[None, :] * s_d,
                   mask=read[:, None] & (offs_v[None, :] < HEAD_DV), other=0.0).to(tl.float32)


@triton.jit
def threshold_partial_kernel(
        Q1, Q2, K1, K2, V, POS, LAM, BETA, PART, LIVE, FLAGS,
        s_q1b, s_q1h, s_q1d, s_q2b, s_q2h, s_q2d,
        s_k1b, s_k1h, s_k1t, s_k1d, s_k2b, s_k2h, s_k2t, s_k2d, s_vb, s_vh, s_vt, s_vd,
        H, GROUP, L, n_splits, pages_per_split, n_pages, scale, p, inv_d, drop_page, lam_stride,
        HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        PAGE: tl.constexpr, TWO_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr, P_MODE: tl.constexpr,
        LAM_MODE: tl.constexpr, RECORD: tl.constexpr, STAGES: tl.constexpr):
    """Partial sum Σ_j (a¹_j − λ a²_j) v_j over this program's pages (a = max(s − τ, 0)^p, s = scale·q̂·k̂_j),
    written to PART[b, h, split, :BLOCK_DV] in fp32 only where it is not zero (LIVE[b, h, split], int32, written by
    every program, says whether it is; a split without a live page has the partial 0, and the combine reads only
    the partials of splits marked in LIVE). λ is LAM[h · lam_stride] (stride 0: one for every head), taken
    as it is (LAM_MODE 0), clamped to [0, 1] (1) or through a sigmoid (2). A page's values are read only when some
    key of the page survives in some view; ``drop_page`` (a test hook, −1 in use) names one page treated as if none
    survived. With RECORD, FLAGS[b, h, page] (int8) gets 1 for a page whose keys were scored and 2 for one whose
    values were read as well."""
    b, h, hk, pos, n_keys = _program(H, GROUP, POS, L)
    split = tl.program_id(1)
    first = split * pages_per_split
    last = tl.minimum(first + pages_per_split, (n_keys + PAGE - 1) // PAGE)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = tl.arange(0, BLOCK_DV)
    tau = tl.load(BETA + h) * threshold_gain(pos, inv_d)
    q1 = _query(Q1, b, h, s_q1b, s_q1h, s_q1d, offs_d, scale, HEAD_D, NORMALIZE)
    if TWO_VIEWS:
        q2 = _query(Q2, b, h, s_q2b, s_q2h, s_q2d, offs_d, scale, HEAD_D, NORMALIZE)
        lam = tl.load(LAM + h * lam_stride).to(tl.float32)
        if LAM_MODE == 1:
            lam = tl.minimum(tl.maximum(lam, 0.0), 1.0)
        elif LAM_MODE == 2:
            lam = tl.sigmoid(lam)
    acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
    for page in tl.range(first, last, num_stages=STAGES):
        keys = page * PAGE + tl.arange(0, PAGE)
        key_ok = keys < n_keys
        u = tl.where(key_ok, _scores(K1, b, hk, s_k1b, s_k1h, s_k1t, s_k1d, keys, key_ok, offs_d, q1, HEAD_D,
                                     NORMALIZE) - tau, 0.0)
        top = tl.max(u, axis=0)
        w = relu_power(u, p, P_MODE)
        if TWO_VIEWS:
            u2 = tl.where(key_ok, _scores(K2, b, hk, s_k2b, s_k2h, s_k2t, s_k2d, keys, key_ok, offs_d, q2, HEAD_D,
                                          NORMALIZE) - tau, 0.0)
            top = tl.maximum(top, tl.max(u2, axis=0))
            w = w - lam * relu_power(u2, p, P_MODE)
        # 1 when some key of the page survives in some view (kept as an integer: the interpreter cannot combine a
        # scalar boolean with a vector one)
        live = tl.where(page == drop_page, 0, (top > 0.0).to(tl.int32))
        if live > 0:  # the values, their product and its sum over the page's keys only where some key survives
            v = _values(V, b, hk, s_vb, s_vh, s_vt, s_vd, keys, key_ok, offs_v, HEAD_DV)
            acc += tl.sum(w[:, None] * v, axis=0)
        if RECORD:
            tl.store(FLAGS + (b * H + h) * n_pages + page, (1 + live).to(tl.int8))
    row = (b * H + h) * n_splits + split
    nonzero = tl.max((acc != 0.0).to(tl.int32), axis=0)  # 0 where no page was live (or the sum is exactly 0)
    tl.store(LIVE + row, nonzero)
    if nonzero > 0:  # a zero partial is never written and never read
        tl.store(PART + row * BLOCK_DV + offs_v, acc)


@triton.jit
def softmax_partial_kernel(
        Q, K, V, POS, PART, STATS,
        s_qb, s_qh, s_qd, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd,
        H, GROUP, L, n_splits, pages_per_split, scale,
        HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        PAGE: tl.constexpr, STAGES: tl.constexpr):
    """Softmax over this program's pages, unnormalised: PART[b, h, split] = Σ_j 2^(x_j − m) v_j and
    STATS[b, h, split] = (m, Σ_j 2^(x_j − m)), x_j = scale·log2(e)·q·k_j, m the split's maximum (−inf, 0 for a
    split past the row's keys, which the combine never reads)."""
    b, h, hk, pos, n_keys = _program(H, GROUP, POS, L)
    split = tl.program_id(1)
    first = split * pages_per_split
    last = tl.minimum(first + pages_per_split, (n_keys + PAGE - 1) // PAGE)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = tl.arange(0, BLOCK_DV)
    q = _query(Q, b, h, s_qb, s_qh, s_qd, offs_d, scale * LOG2E, HEAD_D, False)
    acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
    m = tl.max(tl.full([PAGE], float("-inf"), tl.float32), axis=0)
    total = tl.sum(tl.zeros([PAGE], dtype=tl.float32), axis=0)
    for page in tl.range(first, last, num_stages=STAGES):
        keys = page * PAGE + tl.arange(0, PAGE)
        key_ok = keys < n_keys
        x = tl.where(key_ok, _scores(K, b, hk, s_kb, s_kh, s_kt, s_kd, keys, key_ok, offs_d, q, HEAD_D, False),
                     float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=0))   # finite: a visited page holds at least one key
        alpha = tl.exp2(m - m_new)
        e = tl.exp2(x - m_new)
        total = total * alpha + tl.sum(e, axis=0)
        v = _values(V, b, hk, s_vb, s_vh, s_vt, s_vd, keys, key_ok, offs_v, HEAD_DV)
        acc = acc * alpha + tl.sum(e[:, None] * v, axis=0)
        m = m_new
    row = (b * H + h) * n_splits + split
    tl.store(PART + row * BLOCK_DV + offs_v, acc)
    tl.store(STATS + row * 2, m)
    tl.store(STATS + row * 2 + 1, total)


@triton.jit
def combine_kernel(PART, STATS, SINK, POS, OUT, s_ob, s_oh, s_od,
                   H, L, n_splits, pages_per_split,
                   HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, PAGE: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
                   SOFTMAX: tl.constexpr, HAS_SINK: tl.constexpr):
    """OUT[b, h] from the partials of the splits that hold the row's keys, in split order: the sum of those not zero
    (threshold attention: STATS[b, h, split] > 0 marks them, and only they are read), or
    Σ_s 2^(m_s−M) acc_s / (Σ_s 2^(m_s−M) l_s [+ 2^(sink_h·log2(e) − M)]) (softmax), cast to OUT's dtype."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n_keys = tl.minimum(tl.load(POS + b).to(tl.int64) + 1, L)
    used = ((n_keys + PAGE - 1) // PAGE + pages_per_split - 1) // pages_per_split
    offs_s = tl.arange(0, SPLIT_BLOCK)
    offs_v = tl.arange(0, BLOCK_DV)
    base = (b * H + h) * n_splits
    out = tl.zeros([BLOCK_DV], dtype=tl.float32)
    if SOFTMAX:
        top = tl.max(tl.full([SPLIT_BLOCK], float("-inf"), tl.float32), axis=0)
        for s0 in range(0, used, SPLIT_BLOCK):
            ok = s0 + offs_s < used
            top = tl.maximum(top, tl.max(tl.load(STATS + (base + s0 + offs_s) * 2, mask=ok, other=float("-inf")),
                                         axis=0))
        if HAS_SINK:
            sink = tl.load(SINK + h).to(tl.float32) * LOG2E
            top = tl.maximum(top, sink)
        den = tl.sum(tl.zeros([SPLIT_BLOCK], dtype=tl.float32), axis=0)
        for s0 in range(0, used, SPLIT_BLOCK):
            ok = s0 + offs_s < used
            weight = tl.exp2(tl.load(STATS + (base + s0 + offs_s) * 2, mask=ok, other=float("-inf")) - top)
            den += tl.sum(weight * tl.load(STATS + (base + s0 + offs_s) * 2 + 1, mask=ok, other=0.0), axis=0)
            part = tl.load(PART + (base + s0 + offs_s)[:, None] * BLOCK_DV + offs_v[None, :], mask=ok[:, None],
                           other=0.0)
            out += tl.sum(weight[:, None] * part, axis=0)
        if HAS_SINK:
            den += tl.exp2(sink - top)
        out = out / den
    else:  # STATS: whether each split's partial is not zero; only those are read (the others are 0)
        for s0 in range(0, used, SPLIT_BLOCK):
            live = tl.load(STATS + base + s0 + offs_s, mask=s0 + offs_s < used, other=0) > 0
            if tl.max(live.to(tl.int32), axis=0) > 0:
                out += tl.sum(tl.load(PART + (base + s0 + offs_s)[:, None] * BLOCK_DV + offs_v[None, :],
                                      mask=live[:, None], other=0.0), axis=0)
    tl.store(OUT + b * s_ob + h * s_oh + offs_v * s_od, out.to(OUT.dtype.element_ty), mask=offs_v < HEAD_DV)
