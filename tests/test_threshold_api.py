"""The Triton path's interfaces: torch.compile over the custom ops, the custom ops' registrations,
the drop-in wrappers with the public code's semantics, and the dispatcher's routing."""

import pytest
import torch

from threshold_float64 import Case, make_inputs, naive_attention, rel_err

import kernels
from kernels.threshold import custom_ops as ops
from kernels.threshold.autograd import threshold_attention_triton
from kernels.threshold.public import differential_threshold_rela_triton, threshold_rela_triton
from kernels.inputs import triton_applies


def _tda_inputs(seed=3, T=48, d=32, dv=64):
    case = Case(T=T, d=d, dv=dv, H=2, lam=(0.5,), beta=(0.8,))
    return make_inputs(case, seed)


def test_torch_compile_traces_the_kernels_without_graph_breaks():
    x = _tda_inputs()
    args = [x[n] for n in ("q1", "k1", "v", "q2", "k2")]
    lam = torch.tensor([0.4, 0.6], requires_grad=True)

    def f(q1, k1, v, q2, k2):
        return threshold_attention_triton(q1, k1, v, q2, k2, lam=lam, beta=0.8).square().sum()

    f(*args).backward()
    eager = [a.grad.clone() for a in args] + [lam.grad.clone()]
    for a in args + [lam]:
        a.grad = None
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    compiled(*args).backward()
    for got, want in zip([a.grad for a in args] + [lam.grad], eager):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("skip", [True, False])
def test_custom_ops_pass_opcheck(skip):
    """With skipping the forward also returns the record (uint8, one cell per 64 x 64 tile), which the backward takes;
    without it an empty record."""
    x = _tda_inputs(T=70)
    q1, k1, v, q2, k2 = (x[n].detach() for n in ("q1", "k1", "v", "q2", "k2"))
    lam, beta = x["lam"], x["beta"]
    fwd_args = (q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True, skip, skip)
    torch.library.opcheck(ops.threshold_attention_fwd, fwd_args)
    out, rq1, rk1, rq2, rk2, rec = ops.threshold_attention_fwd(*fwd_args)
    assert rec.dtype == torch.uint8 and rec.shape == ((1, 2, 2, 2) if skip else (0,))
    do = torch.randn_like(out)
    torch.library.opcheck(ops.threshold_attention_bwd,
                          (do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, 2.0, True, 1.0, True,
                           True, False, False))


def test_custom_ops_pass_opcheck_in_the_projection_layout():
    """(B, T, H, d) inputs viewed as (B, H, T, d): the fake implementations promise the strides that the
    kernels' outputs really have (the model's layout; opcheck compares them)."""
    x = _tda_inputs(T=40)
    q1, k1, v, q2, k2 = (x[n].detach().transpose(1, 2).contiguous().transpose(1, 2)
                         for n in ("q1", "k1", "v", "q2", "k2"))
    fwd_args = (q1, k1, v, q2, k2, x["lam"], x["beta"], 2.0, True, 1.0, True, True, True)
    torch.library.opcheck(ops.threshold_attention_fwd, fwd_args)
    out, rq1, rk1, rq2, rk2, rec = ops.threshold_attention_fwd(*fwd_args)
    assert not out.is_contiguous() and out.transpose(1, 2).is_contiguous()
    torch.library.opcheck(ops.threshold_attention_bwd,
                          (torch.randn_like(out), q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, x["lam"], x["beta"],
                           2.0, True, 1.0, True, True, False, False))


def test_threshold_rela_triton_is_unnormalised_one_view():
    case = Case(T=60, d=32, dv=32, two_views=False, normalize=False, strength=(0.0, 0.5))
    x = make_inputs(case, seed=8)
    out = threshold_rela_triton(x["q1"], x["k1"], x["v"], beta=0.5, relu_power=1.0)
    ref = naive_attention(x["q1"].detach().double(), x["k1"].detach().double(),
                          x["v"].detach().double(), beta=torch.full((2,), 0.5, dtype=torch.float64),
                          p=1.0, normalize=False)
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("lambda_value,grad_flows", [(0.3, True), (1.2, False), (-0.1, False)])
def test_differential_wrapper_clamps_lambda(lambda_value, grad_flows):
    x = _tda_inputs(seed=4)
    lambda_param = torch.tensor(lambda_value, requires_grad=True)
    out = differential_threshold_rela_triton(x["q1"], x["q2"], x["k1"], x["k2"], x["v"], beta=0.8,
                                             lambda_param=lambda_param, relu_power=2.0)
    lam = torch.tensor([min(max(lambda_value, 0.0), 1.0)] * 2, dtype=torch.float64)
    ref = naive_attention(*(x[n].detach().double() for n in ("q1", "k1", "v", "q2", "k2")), lam=lam,
                          beta=torch.full((2,), 0.8, dtype=torch.float64))
    assert rel_err(out, ref) < 1e-4
    out.square().sum().backward()
    assert (lambda_param.grad != 0).item() == grad_flows


def test_dispatcher_uses_the_reference_for_cpu_tensors(monkeypatch):
    x = _tda_inputs(seed=6)
    args = [x[n].detach() for n in ("q1", "k1", "v", "q2", "k2")]
    calls = []
    monkeypatch.setattr(kernels.threshold, "threshold_attention_reference",
                        lambda *a, **k: calls.append(1) or torch.zeros(()))
    kernels.threshold_attention(*args, lam=0.5)
    assert calls == [1]


def test_triton_applies_to_supported_cases_only(monkeypatch):
    x = _tda_inputs(seed=7)
    q1, k1, v = (x[n].detach() for n in ("q1", "k1", "v"))
    assert triton_applies(q1, k1, v)  # CPU under the interpreter
    assert not triton_applies(q1.double(), k1.double(), v.double())
    assert not triton_applies(q1, k1, torch.randn(1, 2, 48, 8))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_applies(q1, k1, v)


def test_reference_computes_in_float32_under_autocast():
    """The reference's products run in float32 (its contract) even inside a bf16 autocast region, in the forward and
    in the hand-written backward. Without autocast switched off inside it, autocast rounds the forward's products to
    bf16 in eager mode, and under torch.compile (which traces the backward inside the same region) the backward's
    too: compiled and eager models on the CPU then computed different λ gradients."""
    x = _tda_inputs(seed=7, T=45)
    lam, beta = torch.tensor([0.4], requires_grad=True), torch.tensor([0.9], requires_grad=True)

    def run(autocast: bool):
        args = [x[n].detach().clone().requires_grad_() for n in ("q1", "k1", "v", "q2", "k2")]
        # the backward inside the region too, as a compiled graph traces it (eagerly, a backward called after the
        # region would run without autocast whatever the reference did)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = kernels.threshold.threshold_attention_reference(*args, lam=lam, beta=beta)
            grads = torch.autograd.grad(out.square().sum(), [*args, lam, beta])
        return out, grads

    out_plain, grads_plain = run(False)
    out_cast, grads_cast = run(True)
    assert out_cast.dtype == torch.float32
    assert rel_err(out_cast, out_plain) < 1e-6
    for g_cast, g_plain in zip(grads_cast, grads_plain):
        assert rel_err(g_cast, g_plain) < 1e-6
