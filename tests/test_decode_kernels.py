"""The decoding kernels (kernels/decode) under Triton's interpreter against float64: one query row per sequence and
head, caches whose pages are full, empty, or hold one survivor at a page edge, rows of different lengths (positions
past a row's query hold NaN, which the kernels must never read), grouped key/value heads, bf16, fp16 and fp32; the page
flags the threshold kernel records; a wrong skip decision (the ``drop_page`` hook) caught; the softmax kernel with
and without a sink; input errors; and both kernels compiled for sm_90 without spills."""
import math
import os
import subprocess
import sys

import pytest
import torch

from kernels.decode import softmax_decode, threshold_decode
from kernels.decode.launch import split_plan
from tests.naive import sink_softmax_map, softmax_map
from tests.threshold_float64 import naive_attention, naive_maps, rel_err

PAGE, D, DV, L = 16, 16, 32, 64   # four pages of 16 keys
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
POSITIONS = torch.tensor([63, 46])  # row 0 sees every page; row 1 stops one key before page 2's edge


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _orthogonal(direction: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n random vectors (n, D) orthogonal to ``direction`` (D,): cosine 0 with it."""
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    return x - (x @ direction)[:, None] * direction[None, :]


def structured_cache(two_views: bool, heads: int, kv_heads: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Queries along a direction u (view 2: u2) and keys, per (row, key/value head), laid out by page:
    page 0 all along u (every key survives), page 1 against u (none survives in view 1; in view 2 its key 20 lies
    along u2, so the page is live through view 2 alone), page 2 orthogonal but for its last key 47 along u (one
    survivor at a page edge), page 3 orthogonal but for its first key 48. Row 1's query sits at position 46, so
    its key 47 survives but is invisible; its keys from 48 on are NaN. View 2's keys are orthogonal to u2 except
    key 20."""
    g = torch.Generator().manual_seed(seed)
    B = 2
    out = {"positions": POSITIONS.clone()}
    for view in ("1", "2") if two_views else ("1",):
        q = torch.empty(B, heads, D, dtype=torch.float64)
        k = torch.empty(B, kv_heads, L, D, dtype=torch.float64)
        for b in range(B):
            for hk in range(kv_heads):
                u = _unit(torch.randn(D, generator=g, dtype=torch.float64))
                group = range(hk * heads // kv_heads, (hk + 1) * heads // kv_heads)
                for h in group:
                    q[b, h] = 2.0 * u + 0.05 * torch.randn(D, generator=g, dtype=torch.float64)
                keys = _orthogonal(u, L, g)
                if view == "1":
                    keys[:16] = 3.0 * u + 0.3 * torch.randn(16, D, generator=g, dtype=torch.float64)
                    keys[16:32] = -3.0 * u + 0.3 * torch.randn(16, D, generator=g, dtype=torch.float64)
                    keys[47] = keys[48] = u
                else:
                    keys[20] = u
                k[b, hk] = keys
        k[1, :, 48:] = float("nan")
        out["q" + view], out["k" + view] = q.to(dtype), k.to(dtype)
    v = torch.randn(B, kv_heads, L, DV, generator=g, dtype=torch.float64)
    v[1, :, 48:] = float("nan")
    out["v"] = v.to(dtype)
    out["beta"] = torch.tensor([1.0, 0.9] * (heads // 2))
    out["lam"] = torch.tensor([0.5, 0.8] * (heads // 2)) if two_views else None
    return out


def float64_rows(x: dict, p: float = 2.0, normalize: bool = True, scale: float = 1.0) -> torch.Tensor:
    """(B, H, dv): each row's query at its position over its keys 0 … position (tests/threshold_float64)."""
    rows = []
    for b, pos in enumerate(x["positions"].tolist()):
        keys = slice(0, pos + 1)
        pick = lambda t, is_q: None if t is None else (  # noqa: E731
            t[b:b + 1, :, None] if is_q else t[b:b + 1, :, keys]).double()
        lam = None if x.get("lam") is None else x["lam"].double()
        rows.append(naive_attention(pick(x["q1"], True), pick(x["k1"], False), pick(x["v"], False),
                                    pick(x.get("q2"), True), pick(x.get("k2"), False), lam, x["beta"].double(), p,
                                    normalize, scale)[:, :, 0])
    return torch.cat(rows)


def float64_flags(x: dict) -> torch.Tensor:
    """(B, H, pages) int8: 0 past the row's keys, 1 for a page without a visible survivor in any view, 2 with one."""
    B, H = x["q1"].shape[:2]
    flags = torch.zeros(B, H, L // PAGE, dtype=torch.int8)
    for b, pos in enumerate(x["positions"].tolist()):
        live = torch.zeros(H, pos + 1, dtype=torch.bool)
        for view in ("1", "2") if "q2" in x else ("1",):
            a, _ = naive_maps(x["q" + view][b:b + 1, :, None].double(), x["k" + view][b:b + 1, :, :pos + 1].double(),
                              x["beta"].double(), 2.0, True, 1.0, causal=True)
            live |= a[0, :, 0] > 0
        for page in range(-(-(pos + 1) // PAGE)):
            flags[b, :, page] = 1 + live[:, page * PAGE:(page + 1) * PAGE].any(dim=1).to(torch.int8)
    return flags


def run(x: dict, **options) -> tuple[torch.Tensor, torch.Tensor]:
    flags = torch.zeros(*x["q1"].shape[:2], L // PAGE, dtype=torch.int8)
    out = threshold_decode(x["q1"], x["k1"], x["v"], x.get("q2"), x.get("k2"), positions=x["positions"],
                           lam=x.get("lam"), beta=x["beta"], kernel=True, page=PAGE, read_flags=flags, **options)
    return out, flags


@pytest.mark.parametrize("two_views,heads,kv_heads,dtype,per", [
    (True, 2, 2, torch.float32, 1),     # TDA, one page per split
    (False, 2, 1, torch.bfloat16, 3),   # TRA, grouped heads, a split of three pages and one of one
    (True, 2, 1, torch.float16, None),  # TDA, grouped heads, fp16, the split the launcher picks
    (False, 2, 2, torch.float32, 1),    # TRA, one page per split: page 1's split has no survivor, its partial unread
])
def test_pages_full_empty_and_one_survivor_at_an_edge(two_views, heads, kv_heads, dtype, per):
    x = structured_cache(two_views, heads, kv_heads, dtype)
    want = float64_flags(x)
    # the cache is what it claims: row 0 has a full page, a page empty in view 1, single survivors at page edges
    a, _ = naive_maps(x["q1"][:1, :, None].double(), x["k1"][:1].double(), x["beta"].double(), 2.0, True, 1.0, True)
    alive = a[0, :, 0] > 0
    assert alive[:, :16].all() and not alive[:, 16:32].any()
    assert alive[:, 32:48].sum(dim=1).eq(1).all() and alive[:, 47].all() and alive[:, 48].all()
    assert (want[1, :, 3] == 0).all() and (want[1, :, 2] == 1).all()  # row 1: invisible survivor, page 3 unread
    assert (want[0, :, 1] == (2 if two_views else 1)).all()           # page 1: live through view 2 alone
    out, flags = run(x, pages_per_split=per)
    assert torch.equal(flags, want)
    assert rel_err(out, float64_rows(x)) < TOLERANCE[dtype]


def test_partials_of_splits_without_a_survivor_are_never_read(monkeypatch):
    """A split with no surviving key writes no partial, only a flag, and the combine reads only flagged partials:
    with every buffer the launcher allocates filled with NaN (torch.empty), one page per split (TRA's page 1 and
    row 1's page 2 have no visible survivor), the output is still float64's; a combine that read an unwritten
    partial would return NaN."""
    import kernels.decode.launch as launch

    real_empty = torch.empty

    def poisoned(*shape, **kwargs):
        t = real_empty(*shape, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)
    monkeypatch.setattr(launch.torch, "empty", poisoned)
    x = structured_cache(False, 2, 2, torch.float32)
    out, flags = run(x, pages_per_split=1)
    assert (flags[0, :, 1] == 1).all() and (flags[1, :, 2] == 1).all()   # pages read for their keys only
    assert not torch.isnan(out).any() and rel_err(out, float64_rows(x)) < 1e-4


def test_a_wrong_skip_decision_is_caught():
    """Treating page 2 (one survivor, at its last key) as empty changes row 0's output far beyond the tolerance,
    which the comparison with float64 detects; treating row 0's empty page 1 (TRA) as empty changes no bit."""
    x = structured_cache(False, 2, 2, torch.float32)
    ref = float64_rows(x)
    out, flags = run(x)
    wrong, wrong_flags = run(x, drop_page=2)
    assert rel_err(out[0], ref[0]) < 1e-4
    assert rel_err(wrong[0], ref[0]) > 1e-2      # the check that catches a wrong skip
    assert (wrong_flags[0, :, 2] == 1).all() and (flags[0, :, 2] == 2).all()
    same, _ = run(x, drop_page=1)
    assert torch.equal(same, out)


@pytest.mark.parametrize("case", [
    dict(views=2, p=3.0, d=16, dv=16, heads=2, kv_heads=1, dtype=torch.float32, raw_lam=[-0.4, 0.9],
         transform="sigmoid"),
    dict(views=2, p=2.0, d=32, dv=64, heads=2, kv_heads=2, dtype=torch.bfloat16, raw_lam=[1.3], transform="clamp"),
    dict(views=1, p=1.0, d=24, dv=48, heads=4, kv_heads=2, dtype=torch.bfloat16),
    dict(views=1, p=1.0, d=16, dv=32, heads=2, kv_heads=2, dtype=torch.float32, rela=True),
], ids=["tda-p3-gqa-sigmoid-lambda", "tda-one-clamped-lambda-bf16", "tra-p1-odd-dims-bf16", "rela"])
def test_random_caches_against_float64(case):
    """Correlated random queries and keys (a real share of survivors), odd head dimensions, any p, ReLA's
    unnormalised scores (β = 0, scale 1/√d), ragged positions; λ raw, per head or one for all, with the transform
    (sigmoid, clamp) the kernel applies."""
    g = torch.Generator().manual_seed(1)
    B, H, Hkv, d, T = 2, case["heads"], case["kv_heads"], case["d"], 40
    rela = case.get("rela", False)
    x = {"positions": torch.tensor([39, 17])}
    for view in range(1, case["views"] + 1):
        direction = _unit(torch.randn(1, Hkv, 1, d, generator=g, dtype=torch.float64))
        x[f"q{view}"] = ((0.0 if rela else 1.5) * direction.repeat_interleave(H // Hkv, 1)[:, :, 0]
                         + torch.randn(B, H, d, generator=g, dtype=torch.float64) / math.sqrt(d)).to(case["dtype"])
        x[f"k{view}"] = (direction + torch.randn(B, Hkv, T, d, generator=g, dtype=torch.float64) / math.sqrt(d)
                         ).to(case["dtype"])
    x["v"] = torch.randn(B, Hkv, T, case["dv"], generator=g, dtype=torch.float64).to(case["dtype"])
    x["beta"] = torch.zeros(H) if rela else torch.linspace(0.6, 1.0, H)
    raw = torch.tensor(case["raw_lam"]) if case["views"] == 2 else None
    options = dict(p=case["p"], normalize=not rela, scale=1 / math.sqrt(d) if rela else 1.0)
    out = threshold_decode(x["q1"], x["k1"], x["v"], x.get("q2"), x.get("k2"), positions=x["positions"],
                           lam=raw, lam_transform=case.get("transform"), beta=x["beta"], kernel=True, page=PAGE,
                           **options)
    if raw is not None:
        lam = raw.double().clamp(0, 1) if case["transform"] == "clamp" else torch.sigmoid(raw.double())
        x["lam"] = lam.expand(H)
    ref = float64_rows(x, **options)
    a, _ = naive_maps(x["q1"][:1, :, None].double(), x["k1"][:1].double(), x["beta"].double(), case["p"],
                      not rela, options["scale"], True)
    assert 0.05 < float((a > 0).double().mean()) < 0.95  # both sides of the threshold
    assert rel_err(out, ref) < TOLERANCE[case["dtype"]]


@pytest.mark.parametrize("dtype,kv_heads,sink,per,page", [
    (torch.float32, 2, False, 1, PAGE), (torch.bfloat16, 1, True, None, PAGE), (torch.float32, 1, True, 3, PAGE),
    (torch.float32, 2, True, None, None)])  # None: the kernel's own page (128 keys, longer than the cache here)
def test_softmax_kernel_against_float64(dtype, kv_heads, sink, per, page):
    g = torch.Generator().manual_seed(2)
    B, H, T = 2, 2, L
    positions = torch.tensor([63, 20])
    q = (2 * torch.randn(B, H, D, generator=g, dtype=torch.float64)).to(dtype)
    k = (2 * torch.randn(B, kv_heads, T, D, generator=g, dtype=torch.float64)).to(dtype)
    v = torch.randn(B, kv_heads, T, DV, generator=g, dtype=torch.float64).to(dtype)
    k[1, :, 21:] = float("nan")
    v[1, :, 21:] = float("nan")
    logits = torch.randn(H, generator=g) if sink else None
    out = softmax_decode(q, k, v, positions=positions, sink=logits, kernel=True, page=page, pages_per_split=per)
    rows = []
    for b, pos in enumerate(positions.tolist()):
        qb = q[b:b + 1, :, None].double()
        kb, vb = (t[b:b + 1, :, :pos + 1].double().repeat_interleave(H // kv_heads, 1) for t in (k, v))
        w = sink_softmax_map(qb, kb, logits.double()) if sink else softmax_map(qb, kb)
        rows.append((w @ vb)[:, :, 0])
    assert rel_err(out, torch.cat(rows)) < TOLERANCE[dtype]


def test_split_plan_spreads_pages_evenly():
    assert split_plan(rows=6, n_pages=512, programs=528) == (86, 6)  # 6 · 86 programs of 6 pages (the last: 2)
    assert split_plan(rows=192, n_pages=17, programs=528) == (3, 6)
    assert split_plan(rows=3, n_pages=512, programs=396) == (128, 4)  # paper_small's TDA at 32k, 3 programs per SM
    assert split_plan(rows=4, n_pages=3, programs=528) == (3, 1)      # never more splits than pages
    assert split_plan(rows=1000, n_pages=40, programs=528) == (3, 16)  # at most 16 pages a program
    assert split_plan(rows=1000, n_pages=40, programs=528, max_pages=8) == (5, 8)


def test_bad_inputs_are_clear_errors():
    q, k, v = torch.zeros(2, 2, 16), torch.zeros(2, 2, 8, 16), torch.zeros(2, 2, 8, 32)
    pos = torch.tensor([3, 4])
    with pytest.raises(ValueError, match="k1 must be"):
        threshold_decode(q, k[:, :, :, :8], v, positions=pos)
    with pytest.raises(TypeError, match="positions must be an integer tensor"):
        threshold_decode(q, k, v, positions=pos.float())
    with pytest.raises(ValueError, match=r"positions must be \(2,\)"):
        softmax_decode(q, k, v, positions=pos[:1])
    with pytest.raises(ValueError, match="lam is required"):
        threshold_decode(q, k, v, q, k, positions=pos)
    with pytest.raises(ValueError, match="read_flags and drop_page need the kernel"):
        threshold_decode(q, k, v, positions=pos, kernel=False, drop_page=0)
    with pytest.raises(ValueError, match="kernel=True needs"):
        threshold_decode(q.double(), k.double(), v.double(), positions=pos, kernel=True)
    with pytest.raises(ValueError, match="page must be a power of two >= 16"):
        threshold_decode(q, k, v, positions=pos, page=48)
    with pytest.raises(ValueError, match="page must be a power of two >= 16"):
        softmax_decode(q, k, v, positions=pos, page=8)
    with pytest.raises(ValueError, match="stages must be an integer >= 1"):
        softmax_decode(q, k, v, positions=pos, stages=0)


COMPILE_SM90 = r"""
import torch
from benchmarks.registers import compiling_for, ptxas_usage
from kernels.decode import launch
B, H, L = 2, 6, 4096
for d, dv, views in ((64, 128, 2), (64, 64, 1)):
    q = torch.zeros(B, H, d, dtype=torch.bfloat16)
    k, v = torch.zeros(B, H, L, d, dtype=torch.bfloat16), torch.zeros(B, H, L, dv, dtype=torch.bfloat16)
    flags = torch.zeros(B, H, L // launch.PAGE, dtype=torch.int8)
    with compiling_for(90) as target:
        two = (q, k) if views == 2 else (None, None)
        launch.threshold_decode(q, k, v, *two, torch.zeros(B, dtype=torch.long), torch.ones(H) if views == 2 else None,
                                torch.ones(H), 2.0, True, 1.0, read_flags=flags, target=target)
        launch.softmax_decode(q, k, v, torch.zeros(B, dtype=torch.long), 0.125, torch.zeros(H), target=target)
    for part, compiled in target.compiled.items():
        usage = ptxas_usage(compiled, 90)
        print(part, d, dv, usage.registers, usage.spill_bytes)
for stages in (1, 3):  # paired TDA's threshold kernel with one page in flight and with three
    q = torch.zeros(B, H, 64, dtype=torch.bfloat16)
    k, v = torch.zeros(B, H, L, 64, dtype=torch.bfloat16), torch.zeros(B, H, L, 128, dtype=torch.bfloat16)
    with compiling_for(90) as target:
        launch.threshold_decode(q, k, v, q, k, torch.zeros(B, dtype=torch.long), torch.ones(H), torch.ones(H), 2.0,
                                True, 1.0, stages=stages, target=target)
    print("stages", stages, ptxas_usage(target.compiled["threshold_partial"], 90).shared_kib)
"""


def test_the_kernels_compile_for_sm90_without_spills():
    """Compiled (not interpreted) for Hopper with the installed Triton: the model's layouts (paired TDA, q/k 64 and
    v 128; one view of 64) in bf16, with page flags and a sink, spill nothing; and three pages in flight are
    software-pipelined (their keys staged in shared memory), where one page is not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", COMPILE_SM90], cwd=root, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split() for line in result.stdout.splitlines() if not line.startswith("stages")]
    assert sorted({line[0] for line in lines}) == ["combine", "softmax_partial", "threshold_partial"]
    assert len(lines) == 6 and all(int(line[4]) == 0 for line in lines), result.stdout
    # pages in flight are staged in shared memory by Triton's pipeliner: both views' 64 × 64 bf16 keys (16 KiB a
    # page) for each page beyond the one being scored, so three in flight take at least 32 KiB more than one
    shared = {int(line.split()[1]): float(line.split()[2]) for line in result.stdout.splitlines()
              if line.startswith("stages")}
    assert shared[3] >= shared[1] + 32, result.stdout
