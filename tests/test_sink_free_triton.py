"""The sigmoid, softpick and sink-softmax Triton kernels (run by Triton's interpreter on CPU) against naive float64
maps of SPEC §2: output and every gradient (q, k, v, the bias / sink logit) on odd shapes, NaN guard bands around the
inputs and NaN-poisoned outputs; the deterministic path; σ's other evaluations; torch.compile and the custom ops; the
dispatchers; bad input."""

import os
import subprocess
import sys
import zlib

import pytest
import torch

from sink_free_float64 import (OPS, Case, call, make_inputs, naive_map, poisoned_outputs, rel_err,  # noqa: F401
                               run_and_compare, weight_shares, within)

import kernels
from kernels.inputs import triton_applies
from kernels.sigmoid import launch as sigmoid_launch
from kernels.sigmoid.autograd import sigmoid_attention_triton
from kernels.sink_softmax.autograd import sink_softmax_attention_triton
from kernels.softpick import launch as normalized_launch
from kernels.softpick.autograd import softpick_attention_triton

ENTRY = {"sigmoid": sigmoid_attention_triton, "softpick": softpick_attention_triton,
         "sink_softmax": sink_softmax_attention_triton}
LAUNCH = {"sigmoid": sigmoid_launch, "softpick": normalized_launch, "sink_softmax": normalized_launch}
DQ_KERNEL = {"sigmoid": "sigmoid_dq_kernel", "softpick": "normalized_dq_kernel", "sink_softmax": "normalized_dq_kernel"}

CASES = {
    # grouped key/value heads, fewer queries than keys (a cache: rows aligned to the end), head dims not powers of 2
    "gqa_Tq37_Tk150_d60_dv40": Case(T=150, Tq=37, d=60, dv=40, H=4, Hkv=2),
    # one position (three sequences, so that softpick sees positive and negative single scores; a large ε, since with
    # ε = 1e-6 a lone positive weight is u / (u + ε) and its gradient the difference of two nearly equal terms, as
    # softmax's is for a single key: no float32 computation of it is accurate relative to its size)
    "T1_d16_eps": Case(T=1, d=16, dv=16, B=3, eps=0.5),
    # batch of two, keys not masked, the longest head dimension that is no power of two here
    "B2_T80_d100_noncausal": Case(T=80, d=100, dv=48, B=2, causal=False),
    # the model's layout, bf16 (the interpreter computes in fp32 after loading; outputs rounded)
    "bf16_T128_d64_projection": Case(T=128, d=64, dv=64, dtype=torch.bfloat16, layout="projection"),
    # fp16, dv > d, 63 keys (one short of two blocks)
    "fp16_T63_d48_dv96": Case(T=63, d=48, dv=96, dtype=torch.float16),
}


def _exercised(op: str, case: Case, shares: dict) -> bool:
    """The inputs reach the map's interesting regimes (single-key rows aside)."""
    if op == "softpick":
        return 0.0 < shares["positive"] < 1.0 if case.T == 1 else 0.2 < shares["positive"] < 0.8
    if case.T == 1:
        return True
    if op == "sigmoid":
        return shares["high"] > 0.005 and shares["low"] > 0.05
    return shares["sink_max"] > 0.3 and shares["sink_min"] < 0.3


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("op", OPS)
def test_matches_float64(op, name):
    case = CASES[name]
    seed = zlib.crc32((op + name).encode()) % 2**31
    inputs = make_inputs(case, op, seed)
    shares = weight_shares(op, case, inputs)
    assert _exercised(op, case, shares), shares
    errors = run_and_compare(ENTRY[op], op, case, inputs, seed)
    assert not within(errors, case.dtype), {k: v for k, v in errors.items() if k != "got"}
    if case.layout == "projection":  # outputs and gradients come back in the inputs' layout (no copies)
        got = errors["got"]
        assert got["out"].stride() == inputs["q"].new_empty(got["out"].shape).stride() or \
            got["out"].transpose(1, 2).is_contiguous()
        for n in ("q", "k", "v"):
            assert got[n].stride() == inputs[n].stride(), n


@pytest.mark.parametrize("op", OPS)
def test_deterministic_path_is_exact_and_bit_identical(op, monkeypatch):
    """Outside the deterministic mode dQ is added by atomics; inside it the atomic-free dQ kernel runs, matches the
    float64 maps and gives the same bits on a second run."""
    case = Case(T=70, d=32, dv=32, H=2, Hkv=1)
    inputs = make_inputs(case, op, seed=11)
    calls = []
    kernel = getattr(LAUNCH[op], DQ_KERNEL[op])

    class Counting:
        def __getitem__(self, grid):
            calls.append(grid)
            return kernel[grid]

    monkeypatch.setattr(LAUNCH[op], DQ_KERNEL[op], Counting())
    assert not within(run_and_compare(ENTRY[op], op, case, inputs, seed=11), case.dtype)
    assert not calls
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = run_and_compare(ENTRY[op], op, case, inputs, seed=11)
        second = run_and_compare(ENTRY[op], op, case, inputs, seed=11)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert len(calls) == 2
    assert not within(first, case.dtype), first
    for name, got in first["got"].items():
        if got is not None:
            assert torch.equal(got, second["got"][name]), name


@pytest.mark.parametrize("deterministic", [False, True])
def test_sink_gradient_meets_the_bound_when_small_against_its_terms(deterministic):
    """ds_h = −Σ_i c_i·dO_i with c_i = p_sink,i·o_i sums terms of random sign over the rows, so an output gradient can
    make it small against its standard deviation σ_h = ‖c‖ (the bf16 GPU case at T = 8192 draws one such dO). Here dO
    is moved along c until each head's ds_h is about σ_h / 100, then rounded to bf16; ds_h from the kernels must still
    be within the bf16 bound of the float64 value, on both backward paths and with grouped heads. The same sum with
    Δ_i = dO_i·o_i from the bf16 output the kernels return misses it several times over: the rounding of o, a small
    error against σ_h, is not small against ds_h, which is why the kernels take Δ_i from their fp32 weights."""
    case = Case(T=256, d=32, dv=32, H=2, Hkv=1, dtype=torch.bfloat16)
    inputs = make_inputs(case, "sink_softmax", seed=5)
    q, k, v = (inputs[n] for n in ("q", "k", "v"))
    w = naive_map("sink_softmax", q.double(), k.double(), inputs["param"].double(), inputs["scale"])
    o = w @ v.double().repeat_interleave(2, dim=1)
    c = (1.0 - w.sum(-1, keepdim=True)) * o                    # p_sink,i · o_i
    sigma = c.square().sum(dim=(0, 2, 3)).sqrt()                # (H,)
    g = torch.Generator().manual_seed(6)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64)
    ds = -(do * c).sum(dim=(0, 2, 3))
    do = do + ((ds - sigma / 100) / sigma.square()).view(1, -1, 1, 1) * c
    do = do.to(torch.bfloat16)
    want = -(do.double() * c).sum(dim=(0, 2, 3))
    assert (want.abs() < sigma / 30).all(), (want, sigma)      # small against its terms (after rounding dO)

    param = inputs["param"].clone().requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = sink_softmax_attention_triton(q, k, v, param, scale=inputs["scale"])
        out.backward(do)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert rel_err(param.grad, want) < 1e-2
    from_output = -((1.0 - w.sum(-1)) * (out.detach().double() * do.double()).sum(-1)).sum(dim=(0, 2))
    assert rel_err(from_output, want) > 3e-2


@pytest.mark.parametrize("mode,fold,db_by_dot", [(0, False, False), (3, True, True), (1, False, True)])
def test_sigmoid_other_evaluations(mode, fold, db_by_dot):
    """σ by division (mode 0); with the bias folded into the scores' accumulator (and two Newton steps); and by the
    polynomial alone (mode 1, the 16-bit default); db by a reduction across the tile's rows or by a product with
    ones: each against float64 in fp32, forward and backward, within 1e-4, except that the polynomial alone leaves a
    relative error of up to 3e-4 on each weight (6e-4 on its slope), visibly above 1e-4 and below 1e-2."""
    case = Case(T=70, d=32, dv=32)
    inputs = make_inputs(case, "sigmoid", seed=4)
    q, k, v = (inputs[n].detach() for n in ("q", "k", "v"))
    bias, scale = inputs["param"], inputs["scale"]
    out = sigmoid_launch.forward(q, k, v, bias, scale, True, mode=mode, fold_bias=fold)
    w = naive_map("sigmoid", q.double(), k.double(), bias.double(), scale)
    tol = 1e-4 if mode != 1 else 1e-2
    assert rel_err(out, w @ v.double()) < tol
    if mode == 1:
        assert rel_err(out, w @ v.double()) > 1e-4
    do = torch.randn_like(out)
    dq, dk, dv, dbias = sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, mode=mode,
                                                db_by_dot=db_by_dot)
    leaves = [t.double().requires_grad_() for t in (q, k, v, bias)]
    ref = naive_map("sigmoid", leaves[0], leaves[1], leaves[3], scale) @ leaves[2]
    want = torch.autograd.grad((ref * do.double()).sum(), leaves)
    for got, w_ in zip((dq, dk, dv, dbias), want):
        assert rel_err(got, w_) < tol


@pytest.mark.parametrize("op", ["softpick", "sink_softmax"])
@pytest.mark.parametrize("sign", [1.0, -1.0, 0.0])
def test_normalised_forward_with_any_sign_of_scale(op, sign):
    """The row-normalised forward takes each block's maximum on the unscaled scores and folds the scale into the
    exponent only for a positive scale (FOLD_SCALE); a negative scale turns the maximum into the minimum and a zero
    scale makes every score 0, which the unfolded form handles: each against float64 in fp32, output and every
    gradient within 1e-4 (the backward reads L, so a wrong one shows there), exact zeros where float64 has them."""
    case = Case(T=70, d=32, dv=32)
    inputs = make_inputs(case, op, seed=11)
    q, k, v = (inputs[n].detach() for n in ("q", "k", "v"))
    scale = sign * inputs["scale"]
    sink = inputs["param"] if op == "sink_softmax" else None
    out, lse = normalized_launch.forward(q, k, v, sink, scale, 1e-6, True)
    def close(got, want):   # relative error, or exactly zero where float64 gives zero (softpick at scale 0)
        return rel_err(got, want) < 1e-4 if want.norm() > 0 else bool((got == 0).all())

    w = naive_map(op, q.double(), k.double(), None if sink is None else sink.double(), scale)
    assert close(out, w @ v.double())
    do = torch.randn_like(out)
    dq, dk, dv, _ = normalized_launch.backward(do, q, k, v, out, lse, sink, scale, True, False, False)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = naive_map(op, leaves[0], leaves[1], None if sink is None else sink.double(), scale) @ leaves[2]
    want = torch.autograd.grad((ref * do.double()).sum(), leaves)
    for got, w_ in zip((dq, dk, dv), want):
        assert close(got, w_)


def test_torch_compile_traces_the_kernels_without_graph_breaks():
    """One compiled function calling all three ops (fullgraph: no break) gives eager's gradients."""
    case = Case(T=40, d=16, dv=16)
    x = {op: make_inputs(case, op, seed=3) for op in OPS}
    bias = x["sigmoid"]["param"].clone().requires_grad_()
    sink = x["sink_softmax"]["param"].clone().requires_grad_()
    leaves = [x[op][n] for op in OPS for n in ("q", "k", "v")] + [bias, sink]

    def f(*t):
        a = sigmoid_attention_triton(t[0], t[1], t[2], bias)
        b = softpick_attention_triton(t[3], t[4], t[5])
        c = sink_softmax_attention_triton(t[6], t[7], t[8], sink)
        return a.square().sum() + b.square().sum() + c.square().sum()

    f(*leaves[:9]).backward()
    eager = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves[:9]).backward()
    for got, want in zip([t.grad for t in leaves], eager):
        torch.testing.assert_close(got, want)


def test_custom_ops_pass_opcheck():
    """The custom ops' schemas, fake implementations (shapes and strides, in the projection layout) and dispatch."""
    case = Case(T=24, d=16, dv=16, layout="projection")
    ops = torch.ops.sink_free_kernels
    x = make_inputs(case, "sigmoid", seed=5)
    q, k, v = (x[n].detach() for n in ("q", "k", "v"))
    param, scale = x["param"], x["scale"]
    torch.library.opcheck(ops.sigmoid_attention_fwd, (q, k, v, param, scale, True))
    out = ops.sigmoid_attention_fwd(q, k, v, param, scale, True)
    torch.library.opcheck(ops.sigmoid_attention_bwd, (torch.randn_like(out), q, k, v, param, scale, True, True, False))
    torch.library.opcheck(ops.softpick_attention_fwd, (q, k, v, scale, 1e-6, True))
    out, lse = ops.softpick_attention_fwd(q, k, v, scale, 1e-6, True)
    torch.library.opcheck(ops.softpick_attention_bwd, (torch.randn_like(out), q, k, v, out, lse, scale, True, False))
    torch.library.opcheck(ops.sink_softmax_attention_fwd, (q, k, v, param, scale, True))
    out, lse = ops.sink_softmax_attention_fwd(q, k, v, param, scale, True)
    torch.library.opcheck(ops.sink_softmax_attention_bwd,
                          (torch.randn_like(out), q, k, v, out, lse, param, scale, True, True, False))


@pytest.mark.parametrize("op", OPS)
def test_dispatcher_takes_the_reference_for_cpu_tensors(op, monkeypatch):
    """kernels.<op>_attention runs the kernels on CUDA tensors only: CPU tensors take the reference (the same map)."""
    case = Case(T=30, d=16, dv=16)
    x = make_inputs(case, op, seed=6)
    q, k, v = (x[n].detach() for n in ("q", "k", "v"))
    entry = getattr(kernels, f"{op}_attention")
    got = call(entry, op, q, k, v, x["param"], x["scale"], True)
    want = naive_map(op, q.double(), k.double(), None if x["param"] is None else x["param"].double(), x["scale"]) \
        @ v.double()
    assert rel_err(got, want) < 1e-5
    module = {"sigmoid": kernels.sigmoid, "softpick": kernels.softpick, "sink_softmax": kernels.sink_softmax}[op]
    monkeypatch.setattr(module, f"{op}_attention_reference", lambda *a, **kw: "reference")
    assert call(entry, op, q, k, v, x["param"], x["scale"], True) == "reference"


def test_triton_applies_to_supported_cases_only(monkeypatch):
    q, k, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 32)
    assert triton_applies(q, k, v)  # CPU under the interpreter
    assert not triton_applies(q.double(), k.double(), v.double())
    assert not triton_applies(q[..., :8], k[..., :8], v)       # head dimension 8
    assert not triton_applies(q, k, torch.randn(1, 2, 8, 264))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_applies(q, k, v)


def _good(H=2, Hkv=2, T=8, d=16, dv=32):
    g = torch.Generator().manual_seed(0)
    return dict(q=torch.randn(1, H, T, d, generator=g), k=torch.randn(1, Hkv, T, d, generator=g),
                v=torch.randn(1, Hkv, T, dv, generator=g))


BAD = [
    (dict(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    (dict(v=torch.randn(1, 2, 8)), ValueError, "v must have 4 dimensions"),
    (dict(q=torch.randn(1, 2, 8, 16, dtype=torch.float64)), TypeError, "q has dtype"),
    (dict(k=torch.randn(1, 2, 8, 16).half()), TypeError, "k has dtype"),
    (dict(v=torch.ones(1, 2, 8, 32, dtype=torch.int32)), TypeError, "v has dtype"),
    (dict(k=torch.randn(1, 2, 8, 16, device="meta")), ValueError, "k is on meta"),
    (dict(k=torch.randn(2, 2, 8, 16)), ValueError, "k must be"),
    (dict(k=torch.randn(1, 3, 8, 16), v=torch.randn(1, 3, 8, 32)), ValueError, "k has 3 heads"),
    (dict(k=torch.randn(1, 2, 4, 16), v=torch.randn(1, 2, 4, 32)), ValueError, "fewer than q"),
    (dict(v=torch.randn(1, 2, 9, 32)), ValueError, "v must be"),
    (dict(q=torch.randn(1, 2, 8, 8), k=torch.randn(1, 2, 8, 8)), ValueError, "q head dimension is 8"),
    (dict(v=torch.randn(1, 2, 8, 264)), ValueError, "v head dimension is 264"),
    (dict(q=torch.randn(1, 2, 0, 16)), ValueError, "q must not be empty"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
    (dict(scale="0.1"), TypeError, "scale must be a real number"),
    (dict(causal=1), TypeError, "causal must be a bool"),
]
PARAM_BAD = [
    ("sigmoid", dict(param=torch.ones(3)), ValueError, "bias must be a float, a 0-d tensor or a \\(2,\\) tensor"),
    ("sigmoid", dict(param=torch.ones(2, dtype=torch.int64)), TypeError, "bias must be a floating-point"),
    ("sigmoid", dict(param=float("nan")), ValueError, "bias must be finite"),
    ("sink_softmax", dict(param=torch.ones(2, 2)), ValueError, "sink must be"),
    ("sink_softmax", dict(param="0"), TypeError, "sink must be a real number"),
    ("softpick", dict(eps=-1.0), ValueError, "eps must be >= 0"),
    ("softpick", dict(eps=None), TypeError, "eps must be a real number"),
]


def _call(op, **changes):
    args = _good()
    options = dict(scale=0.25, causal=True)
    param = 0.0
    for key, value in changes.items():
        if key in args:
            args[key] = value
        elif key == "param":
            param = value
        else:
            options[key] = value
    if op == "softpick":
        return softpick_attention_triton(args["q"], args["k"], args["v"], **options)
    return ENTRY[op](args["q"], args["k"], args["v"], param, **options)


@pytest.fixture
def no_launch(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")
    monkeypatch.setattr(sigmoid_launch, "forward", refuse)
    monkeypatch.setattr(normalized_launch, "forward", refuse)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("changes,error,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises_before_launch(no_launch, op, changes, error, message):
    with pytest.raises(error, match=message):
        _call(op, **changes)


@pytest.mark.parametrize("op,changes,error,message", PARAM_BAD, ids=[m for *_, m in PARAM_BAD])
def test_bad_parameters_raise_before_launch(no_launch, op, changes, error, message):
    with pytest.raises(error, match=message):
        _call(op, **changes)


def test_cpu_tensors_need_the_interpreter(no_launch, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for op in OPS:
        with pytest.raises(ValueError, match="q is on cpu: the Triton kernels need CUDA tensors"):
            _call(op)


_COMPILE = """
import torch
from benchmarks.registers import compiling_for, ptxas_usage
from kernels.sigmoid import launch as sigmoid_launch
from kernels.softpick import launch as normalized_launch
T, H = 4096, 12
mk = lambda: torch.zeros(1, T, H, 64, dtype=torch.bfloat16).transpose(1, 2)
q, k, v, out, do = mk(), mk(), mk(), mk(), mk()
bias, lse = torch.zeros(H), torch.zeros(1, H, T)
calls = {
    "sigmoid": (lambda t: sigmoid_launch.forward(q, k, v, bias, 0.125, True, target=t),
                lambda t: sigmoid_launch.backward(do, q, k, v, bias, 0.125, True, True, False, gluon=False, target=t)),
    "softpick": (lambda t: normalized_launch.forward(q, k, v, None, 0.125, 1e-6, True, target=t),
                 lambda t: normalized_launch.backward(do, q, k, v, out, lse, None, 0.125, True, False, False,
                                                      gluon=False, target=t)),
    "sink": (lambda t: normalized_launch.forward(q, k, v, bias, 0.125, 0.0, True, target=t),
             lambda t: normalized_launch.backward(do, q, k, v, out, lse, bias, 0.125, True, True, False, gluon=False,
                                                  target=t)),
}
for op, (fwd, bwd) in calls.items():
    for direction, call, part in (("fwd", fwd, "fwd"), ("bwd", bwd, "dkdv")):
        with compiling_for(90) as target:
            call(target)
            u = ptxas_usage(target.compiled[part], 90)
        print(op, direction, u.registers, u.spill_bytes, u.shared_kib)
"""


def test_default_kernels_compile_for_hopper_without_spills():
    """The forward and Triton dK/dV kernels of the three ops (on Hopper the backward is Gluon's where it fits, compiled
    by test_score_gluon.py; the Triton one takes every other case), bf16 with heads of 64 at their default tiles, compiled (not
    interpreted) for sm_90 by the installed Triton through the launchers, in a process of their own (as
    benchmarks.registers does): each fits an H100/H200 (at most 255 registers, 227 KiB of shared memory) and spills
    nothing."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    run = subprocess.run([sys.executable, "-c", _COMPILE], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=path, TRITON_INTERPRET="0"), timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split("\n")
    usage = [line.split() for line in lines if line]
    assert len(usage) == 6, run.stdout
    for op, direction, registers, spills, shared in usage:
        assert int(registers) <= 255 and int(spills) == 0 and float(shared) <= 227, (op, direction, run.stdout)
