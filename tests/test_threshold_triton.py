"""The Triton kernels (run by Triton's interpreter on CPU) against a naive float64 implementation of
SPEC §1: output and every gradient, odd shapes, every option, NaN guard bands around the inputs and
NaN-poisoned outputs."""

import math

import pytest
import torch

import threshold_float64
from threshold_float64 import (Case, make_inputs, poisoned_outputs, projection_layout,  # noqa: F401
                              run_and_compare, survivor_shares)

from kernels import common
from kernels.threshold import launch
from kernels.threshold.options import ThresholdOptions
from kernels.threshold.autograd import threshold_attention_triton

FP32_TOL = 1e-4
LOW_PRECISION_TOL = 1e-2

CASES = {
    # TDA, paired-like layout (dv = 2d), lam at 0, inside, at 1 and outside [0, 1] across heads.
    "tda_T200_d48_dv96": Case(T=200, d=48, dv=96, H=4, Hkv=4, lam=(0.0, 0.5, 1.0, 1.4)),
    # grouped key/value heads, p = 1, beta 0.5, negative lam
    "tda_T111_d60_gqa_p1": Case(T=111, d=60, dv=60, H=4, Hkv=2, beta=(0.5,), lam=(-0.3, 0.25), p=1.0),
    # beta 0 (no threshold), p = 3, the smallest head dimension, dv != d
    "tda_T63_d16_p3_beta0": Case(T=63, d=16, dv=32, beta=(0.0,), lam=(0.7,), p=3.0),
    # real p, per-head beta
    "tda_T90_d32_p1.5": Case(T=90, d=32, dv=24, beta=(1.0, 0.5), lam=(0.3,), p=1.5),
    # TRA, non-power-of-two head dimension
    "tra_T200_d100": Case(T=200, d=100, dv=100, two_views=False),
    "tra_T1_d16": Case(T=1, d=16, dv=16, two_views=False),
    # ReLA: no normalisation, score scale 1/sqrt(d), beta 0, p 1
    "rela_T111_d64": Case(T=111, d=64, dv=64, two_views=False, beta=(0.0,), p=1.0,
                          normalize=False, scale=1 / math.sqrt(64), strength=(0.0, 0.3)),
    # fewer queries than keys (decoding with a cache): bottom-right alignment
    "tda_Tq37_Tk150": Case(T=150, Tq=37, d=32, dv=64, lam=(0.4,)),
    "tda_noncausal_T70": Case(T=70, d=32, dv=48, causal=False, beta=(1.0,), lam=(0.6,)),
    # batch > 1 with grouped heads and TRA
    "tra_B2_gqa_T45": Case(B=2, T=45, d=48, dv=80, H=4, Hkv=1, two_views=False, beta=(0.5,)),
    # 16-bit inputs (the interpreter computes in fp32 after loading; outputs rounded)
    "tda_bf16_T128_d64_dv128": Case(T=128, d=64, dv=128, dtype=torch.bfloat16),
    "tra_fp16_T100_d48": Case(T=100, d=48, dv=48, two_views=False, dtype=torch.float16),
}




@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name):
    case = CASES[name]
    seed = sum(map(ord, name))
    inputs = make_inputs(case, seed)
    shares = survivor_shares(inputs, case)
    # a real share of weights survives, and (beyond a single entry) the threshold removes some
    assert all(s >= 0.01 and (s <= 0.99 or case.T == 1) for s in shares), f"survivor shares {shares}"
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed,
                             beta_grad=name != "tda_T200_d48_dv96")
    tol = FP32_TOL if case.dtype == torch.float32 else LOW_PRECISION_TOL
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"errors above {tol}: {bad} (all: {errors})"


def test_shared_beta_and_lam_tensors_get_summed_gradients():
    """0-d beta and lam tensors: their gradient is the sum over heads of the per-head gradients."""
    case = Case(T=64, d=32, dv=32, H=2, beta=(0.8,), lam=(0.3,))
    inputs = make_inputs(case, seed=5)
    beta0 = torch.tensor(0.8, requires_grad=True)
    lam0 = torch.tensor(0.3, requires_grad=True)
    args = (inputs["q1"], inputs["k1"], inputs["v"], inputs["q2"], inputs["k2"])
    threshold_attention_triton(*args, lam=lam0, beta=beta0).square().sum().backward()
    beta_h = torch.full((2,), 0.8, requires_grad=True)
    lam_h = torch.full((2,), 0.3, requires_grad=True)
    threshold_attention_triton(*args, lam=lam_h, beta=beta_h).square().sum().backward()
    torch.testing.assert_close(beta0.grad, beta_h.grad.sum())
    torch.testing.assert_close(lam0.grad, lam_h.grad.sum())
    assert beta_h.grad.abs().min() > 0 and lam_h.grad.abs().min() > 0


@pytest.mark.parametrize("atomic", [True, False])
@pytest.mark.parametrize("case", [Case(T=70, d=32, dv=64, H=2, lam=(0.4,)),
                                  Case(B=2, T=45, d=48, dv=80, H=4, Hkv=2, two_views=False)],
                         ids=["tda", "tra_gqa"])
def test_projection_layout_comes_back_in_that_layout(monkeypatch, case, atomic):
    """Inputs laid out (B, T, H, d): the output and every gradient are written in that layout (so the
    model's way back to (B, T, H·d) copies nothing) on both dQ paths, and match the float64 reference."""
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: atomic)
    inputs = make_inputs(case, seed=21)
    names = ["q1", "k1", "v"] + (["q2", "k2"] if case.two_views else [])
    for n in names:
        inputs[n] = projection_layout(inputs[n])
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed=21)
    assert all(v <= FP32_TOL for v in errors.values()), errors

    x = {n: inputs[n].detach() for n in names}
    q2, k2 = x.get("q2"), x.get("k2")
    out, *norms = launch.forward(x["q1"], x["k1"], x["v"], q2, k2, inputs.get("lam"), inputs["beta"],
                                 ThresholdOptions())
    assert out.stride() == x["q1"].new_empty(out.shape[0], out.shape[2], out.shape[1], out.shape[3]) \
        .transpose(1, 2).stride()
    do = torch.randn_like(out)
    grads = launch.backward(do, x["q1"], x["k1"], x["v"], q2, k2, *norms, inputs.get("lam"), inputs["beta"],
                            ThresholdOptions(), case.two_views, False, False)
    for n, g in zip(["q1", "k1", "v", "q2", "k2"], grads):
        if n in x:
            assert g.stride() == x[n].stride(), n


def test_views_in_different_layouts_get_their_own_dq_layouts_with_atomics(monkeypatch):
    """dQ by atomics finishes both views in one launch, each with its own strides: q1 contiguous and q2 in the
    projections' layout come back as dq1, dq2 in those layouts, both matching the float64 reference."""
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: True)
    calls = []
    monkeypatch.setattr(launch, "dq_finish_kernel", _counting(launch.dq_finish_kernel, calls))
    case = Case(T=53, d=32, dv=64, H=2, lam=(0.4, 1.2))
    inputs = make_inputs(case, seed=8)
    inputs["q2"] = projection_layout(inputs["q2"])
    assert inputs["q1"].stride() != inputs["q2"].stride()
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed=8)
    assert all(v <= FP32_TOL for v in errors.values()), errors
    assert [grid[1] for grid in calls] == [2]  # one launch, both views
    x = {n: inputs[n].detach() for n in ("q1", "k1", "v", "q2", "k2")}
    out, *norms = launch.forward(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], inputs["lam"], inputs["beta"],
                                 ThresholdOptions())
    dq1, _, _, dq2, *_ = launch.backward(torch.randn_like(out), x["q1"], x["k1"], x["v"], x["q2"], x["k2"], *norms,
                                         inputs["lam"], inputs["beta"], ThresholdOptions(), True, False, False)
    assert dq1.is_contiguous()  # q1: a (B, H, T, d) view into a guarded buffer
    assert dq2.stride() == x["q2"].stride()  # q2: dense (B, T, H, d) seen as (B, H, T, d)


@pytest.mark.parametrize("case", [Case(T=75, d=32, dv=64, H=4, Hkv=2, B=2, lam=(0.4, 1.2, -0.3, 0.0),
                                       beta=(1.0, 0.5, 0.8, 0.3)),
                                  Case(T=75, d=32, dv=32, H=4, Hkv=4, B=2, two_views=False,
                                       beta=(1.0, 0.5, 0.8, 0.3))],
                         ids=["two_views", "one_view"])
def test_atomic_dq_adds_the_head_sums_in_its_finishing_launch(monkeypatch, case):
    """With dQ by atomics, dq_finish_kernel also adds dλ's and dβ's partial sums (its programs past dQ's rows): no
    launch of head_sums_kernel, and per-head dλ and dβ (differing heads, batch 2) match the float64 reference."""
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: True)
    finish, sums = [], []
    monkeypatch.setattr(launch, "dq_finish_kernel", _counting(launch.dq_finish_kernel, finish))
    monkeypatch.setattr(launch, "head_sums_kernel", _counting(launch.head_sums_kernel, sums))
    inputs = make_inputs(case, seed=5)
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed=5)
    assert {"dbeta", "dlam"} & errors.keys() == ({"dbeta", "dlam"} if case.two_views else {"dbeta"})
    assert all(v <= FP32_TOL for v in errors.values()), errors
    assert len(finish) == 1 and not sums


def test_deterministic_path_matches_reference_and_repeats(monkeypatch):
    """One view accumulates dQ with atomics, except under torch.use_deterministic_algorithms,
    where the backward takes the atomic-free dQ kernel (two views always do)."""
    case = Case(T=100, d=32, dv=64, H=4, Hkv=2, two_views=False)
    inputs = make_inputs(case, seed=11)
    calls = []
    monkeypatch.setattr(launch, "dq_kernel", _counting(launch.dq_kernel, calls))
    run_and_compare(threshold_attention_triton, case, inputs, seed=11)
    assert not calls
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=11)
        first = [inputs[n].grad.clone() for n in ("q1", "k1", "v")]
        run_and_compare(threshold_attention_triton, case, inputs, seed=11)
        second = [inputs[n].grad for n in ("q1", "k1", "v")]
    finally:
        torch.use_deterministic_algorithms(previous)
    assert len(calls) == 2
    assert all(v <= FP32_TOL for v in errors.values()), errors
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("atomic", [True, False])
def test_both_dq_paths_match_reference(monkeypatch, atomic):
    """dQ accumulated with atomics in the dK/dV kernel, or by the dQ kernel, whatever the default
    table picks: both match the float64 reference for two views (grouped heads, odd T) and one."""
    calls = []
    monkeypatch.setattr(launch, "dq_kernel", _counting(launch.dq_kernel, calls))
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: atomic)
    for case in (Case(T=77, d=32, dv=64, H=4, Hkv=2, lam=(0.4, 1.1)),
                 Case(T=77, d=48, dv=48, H=2, two_views=False, beta=(0.5,))):
        inputs = make_inputs(case, seed=3)
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=3)
        assert all(v <= FP32_TOL for v in errors.values()), errors
    assert len(calls) == (0 if atomic else 2)


class _counting:
    """Wraps a Triton kernel so that launches through ``kernel[grid](...)`` are counted."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.kernel[grid]


@pytest.mark.parametrize("atomic", [True, False])
def test_query_major_dkdv_layout_matches_reference(monkeypatch, atomic):
    """The dK/dV kernel with (queries, keys) tiles: every gradient, with either dQ path, matches the
    float64 reference (two views with grouped heads and odd T, fewer queries than keys, real p with
    beta's gradient, no causal mask, one view)."""
    monkeypatch.setattr(launch, "INTERPRETER_CONFIG", launch.TileConfig(32, 32, 4, 1, query_major=True))
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: atomic)
    for i, case in enumerate((Case(T=77, d=32, dv=64, H=4, Hkv=2, lam=(0.4, 1.1)),
                              Case(T=150, Tq=37, d=32, dv=64, lam=(0.4,)),
                              Case(T=90, d=32, dv=24, beta=(1.0, 0.5), lam=(0.3,), p=1.5),
                              Case(T=70, d=32, dv=48, causal=False, beta=(1.0,), lam=(0.6,)),
                              Case(T=77, d=48, dv=48, H=2, two_views=False, beta=(0.5,)))):
        inputs = make_inputs(case, seed=20 + i)
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=20 + i)
        assert all(v <= FP32_TOL for v in errors.values()), (case, errors)


@pytest.mark.parametrize("query_major", [False, True])
def test_dv_apart_matches_reference(monkeypatch, query_major):
    """dV in a launch of its own and dK (with dQ by atomics, dlam, dbeta) in another: every gradient
    matches the float64 reference, in either tile layout (two views with grouped heads, fewer queries
    than keys, real p with beta's gradient, no causal mask, one view)."""
    calls = []
    monkeypatch.setattr(launch, "INTERPRETER_CONFIG", launch.TileConfig(32, 32, 4, 1, query_major=query_major))
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: True)
    monkeypatch.setattr(launch, "dv_pass_apart", lambda two_views: True)
    monkeypatch.setattr(launch, "dkdv_kernel", _counting(launch.dkdv_kernel, calls))
    cases = (Case(T=77, d=32, dv=64, H=4, Hkv=2, lam=(0.4, 1.1)), Case(T=150, Tq=37, d=32, dv=64, lam=(0.4,)),
             Case(T=90, d=32, dv=24, beta=(1.0, 0.5), lam=(0.3,), p=1.5),
             Case(T=70, d=32, dv=48, causal=False, beta=(1.0,), lam=(0.6,)),
             Case(T=77, d=48, dv=48, H=2, two_views=False, beta=(0.5,)))
    for i, case in enumerate(cases):
        inputs = make_inputs(case, seed=40 + i)
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=40 + i)
        assert all(v <= FP32_TOL for v in errors.values()), (case, errors)
    assert len(calls) == 2 * len(cases)


@pytest.mark.parametrize("query_major,atomic,apart", [(False, False, False), (True, True, False),
                                                      (False, True, True), (True, True, True)])
def test_tma_reads_match_reference(monkeypatch, query_major, atomic, apart):
    """The kernels (forward, dK/dV, dQ) reading q, k, v, dO through tensor descriptors (Hopper's copy
    engine, emulated by the interpreter): the output and every gradient match the float64 reference,
    for tiles that overhang T and d; inputs whose strides a descriptor cannot take fall back to pointers."""
    unaligned = threshold_float64.guarded
    counters = {name: threshold_float64.DescriptorCount(getattr(launch, name))
                for name in ("threshold_attention_fwd_kernel", "dkdv_kernel", "dq_kernel")}
    for name, c in counters.items():
        monkeypatch.setattr(launch, name, c)
    counter = counters["dkdv_kernel"]
    monkeypatch.setattr(launch, "INTERPRETER_CONFIG",
                        launch.TileConfig(32, 32, 4, 1, query_major=query_major, tma=True))
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: atomic)
    monkeypatch.setattr(launch, "dv_pass_apart", lambda two_views: apart)
    for i, case in enumerate((Case(T=77, d=32, dv=64, H=4, Hkv=2, lam=(0.4, 1.1)),
                              Case(T=90, d=24, dv=40, beta=(1.0, 0.5), lam=(0.3,), p=1.5),
                              Case(T=150, Tq=37, d=32, dv=64, lam=(0.4,)),
                              Case(T=77, d=48, dv=48, H=2, two_views=False, beta=(0.5,)))):
        # inputs and output gradient in NaN-guarded buffers whose strides a descriptor takes (the last
        # case keeps the unaligned ones)
        monkeypatch.setattr(threshold_float64, "guarded", threshold_float64.aligned_guarded if i < 3 else unaligned)
        inputs = make_inputs(case, seed=60 + i)
        tensors = [inputs[n] for n in ("q1", "k1", "v", "q2", "k2") if inputs.get(n) is not None]
        ready = common.tma_ready(*tensors)
        before = counter.with_descriptors
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=60 + i)
        assert all(v <= FP32_TOL for v in errors.values()), (case, errors)
        assert (counter.with_descriptors > before) == ready, (case, ready)
    assert counter.with_descriptors > 0 and counters["threshold_attention_fwd_kernel"].with_descriptors == 3
    assert counters["dq_kernel"].with_descriptors == (3 if not atomic else 0)


@pytest.mark.parametrize("path,query_major", [("split", False), ("atomic", True), ("dv_apart", False),
                                               ("dv_apart", True)])
def test_skipping_empty_tiles_matches_reference(monkeypatch, path, query_major):
    """Every kernel with SKIP_EMPTY (forward; dK/dV with the dQ kernel, with dQ atomics, or with dV apart)
    on inputs where some 32 x 32 tiles have no surviving weight in either view and others do: output and
    gradients match the float64 reference (skipping is exact)."""
    from threshold_float64 import naive_maps

    monkeypatch.setattr(launch, "INTERPRETER_CONFIG",
                        launch.TileConfig(32, 32, 4, 1, query_major=query_major, skip_empty=True))
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: path != "split")
    monkeypatch.setattr(launch, "dv_pass_apart", lambda two_views: path == "dv_apart")
    for i, case in enumerate((Case(T=200, d=32, dv=64, lam=(0.5,), strength=(0.0, 0.5)),
                              Case(T=150, d=48, dv=48, two_views=False, strength=(0.0, 0.5)))):
        inputs = make_inputs(case, seed=80 + i)
        support = 0
        for view in ("1", "2") if case.two_views else ("1",):
            a, _ = naive_maps(inputs["q" + view].detach().double(), inputs["k" + view].detach().double(),
                              inputs["beta"].double(), case.p, case.normalize, case.scale, case.causal)
            support = (a != 0) | support
        n = -(-case.T // 32)
        pad = n * 32 - case.T
        tiles = torch.nn.functional.pad(support.double(), (0, pad, 0, pad)).unfold(-2, 32, 32).unfold(-2, 32, 32)
        occupied = tiles.sum((-1, -2))[..., torch.tril(torch.ones(n, n, dtype=torch.bool))] > 0
        assert occupied.any() and not occupied.all(), "the case must have empty and occupied causal tiles"
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=80 + i)
        assert all(v <= FP32_TOL for v in errors.values()), (case, errors)


def test_a_float_parameter_becomes_one_reused_head_vector():
    from kernels.inputs import as_head_vector

    a, b = as_head_vector(0.5, 4, torch.device("cpu")), as_head_vector(0.5, 4, torch.device("cpu"))
    assert a is b and torch.equal(a, torch.full((4,), 0.5))
    assert torch.equal(as_head_vector(0.25, 4, torch.device("cpu")), torch.full((4,), 0.25))
    assert as_head_vector(0.5, 3, torch.device("cpu")).shape == (3,)


def test_a_head_vector_parameter_passes_as_it_is_and_others_keep_their_gradient():
    from kernels.inputs import as_head_vector

    cpu = torch.device("cpu")
    lam = torch.rand(4, requires_grad=True)
    assert as_head_vector(lam, 4, cpu) is lam  # no view or expand step in the backward
    strided = torch.rand(4, 2)[:, 0].requires_grad_()
    for x in (torch.tensor(0.3, requires_grad=True), strided,
              torch.rand(4, dtype=torch.float64, requires_grad=True), torch.rand(1, requires_grad=True)):
        y = as_head_vector(x, 4, cpu)
        assert y.shape == (4,) and y.dtype == torch.float32 and y.is_contiguous() and y is not x
        (y * torch.arange(1.0, 5.0)).sum().backward()
        expected = torch.full_like(x, 10.0) if x.numel() == 1 else torch.arange(1.0, 5.0, dtype=x.dtype)
        assert torch.allclose(x.grad, expected)


@pytest.mark.parametrize("need_dlam,need_dbeta", [(True, True), (True, False), (False, True)])
def test_head_sums_add_each_heads_partials_over_batch_and_blocks(need_dlam, need_dbeta):
    """dλ and dβ from the backward's partial sums (2, B, H, blocks): each head's row of the asked-for parameter summed
    over batch and key blocks, more blocks than one step of the kernel takes (HEAD_SUMS_BLOCK) so that its loop and
    its last, partial step both count; the other row's values (large) must not leak in."""
    torch.manual_seed(3)
    B, H, nb = 3, 5, launch.HEAD_SUMS_BLOCK + 37
    partials = torch.randn(2, B, H, nb, dtype=torch.float32)
    want = partials.double().sum(dim=(1, 3))
    for row, need in ((0, need_dlam), (1, need_dbeta)):
        if not need:
            partials[row] += 1e6  # a row not asked for: read by mistake, it would show
    dlam, dbeta = launch._head_sums(partials, need_dlam, need_dbeta, None)
    for got, need, row in ((dlam, need_dlam, 0), (dbeta, need_dbeta, 1)):
        if not need:
            assert got is None
            continue
        assert got.shape == (H,) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want[row], rtol=1e-5, atol=1e-4)
