"""TDA in the paired head layout (kernels.threshold_attention_paired): q and k whole, pair h's views in heads 2h and
2h + 1. On the Triton path (the interpreter here) its output and every gradient are the bits of the same call with the
views given apart, the gradients of q and k come back whole in their inputs' layout, and autograd builds none of the
slices' zero-filled gradients; on the CPU it is the reference on the views. The model's paired TDA takes this entry."""

import pytest
import torch

from threshold_float64 import Case, make_inputs, projection_layout

import kernels
from benchmarks.attention import paired_whole
from kernels.threshold.autograd import paired_threshold_attention_triton, threshold_attention_triton
from kernels.threshold.options import ThresholdOptions


def _paired_inputs(case: Case, seed: int, beta_grad: bool = False) -> dict:
    """make_inputs' views interleaved into whole q and k leaves in the projection layout (benchmarks.attention's
    paired_whole), v in that layout too."""
    x = make_inputs(case, seed)
    lam = x["lam"].clone().requires_grad_()
    beta = x["beta"].clone().requires_grad_(beta_grad)
    q, k = paired_whole(x)
    return dict(q=q, k=k, v=projection_layout(x["v"]), lam=lam, beta=beta)


def _views(x: dict) -> tuple:
    q, k = x["q"], x["k"]
    return q[:, 0::2], k[:, 0::2], x["v"], q[:, 1::2], k[:, 1::2]


CASES = {
    "T70": Case(T=70, d=32, dv=64, H=2, lam=(0.3, 0.7), beta=(0.8,)),
    "gqa_Tq37_Tk90": Case(T=90, Tq=37, d=32, dv=48, H=4, Hkv=2, lam=(0.5, 1.0), beta=(0.6, 1.1)),
    "p1_d24": Case(T=50, d=24, dv=40, H=2, p=1.0, beta=(0.5,)),
}


@pytest.mark.parametrize("skip_empty", [True, False])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_paired_entry_gives_the_bits_of_the_views_given_apart(name, deterministic, skip_empty):
    case = CASES[name]
    x = _paired_inputs(case, seed=sum(map(ord, name)), beta_grad=True)
    leaves = [x["q"], x["k"], x["v"], x["lam"], x["beta"]]
    options = ThresholdOptions(p=case.p)
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"],
                                                options=options, skip_empty=skip_empty)
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, do)
        apart = threshold_attention_triton(*_views(x), lam=x["lam"], beta=x["beta"], options=options,
                                           skip_empty=skip_empty)
        grads_apart = torch.autograd.grad(apart, leaves, do)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(out, apart)
    for name_, got, want in zip(("q", "k", "v", "lam", "beta"), grads, grads_apart):
        assert torch.equal(got, want), name_
        assert got.abs().sum() > 0, name_  # (inputs with survivors: gradients that could differ)
    for got, leaf in zip(grads[:3], leaves[:3]):
        assert got.stride() == leaf.stride()  # whole, in the projection layout: no copy on the way back


def _nodes(tensor: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [tensor.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_autograd_builds_no_slice_gradients_for_the_paired_entry():
    """Given the views apart, each view's gradient passes through a SliceBackward node (a zero-filled tensor of the
    whole's size with the view copied in, then the two added); the paired entry's gradients reach q and k directly."""
    x = _paired_inputs(CASES["T70"], seed=1)
    paired = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"])
    apart = threshold_attention_triton(*_views(x), lam=x["lam"], beta=x["beta"])
    assert "SliceBackward0" in _nodes(apart)
    assert "SliceBackward0" not in _nodes(paired)


def test_torch_compile_traces_the_paired_entry_without_graph_breaks():
    x = _paired_inputs(CASES["T70"], seed=2)
    leaves = [x["q"], x["k"], x["v"], x["lam"]]

    def f(q, k, v):
        return paired_threshold_attention_triton(q, k, v, lam=x["lam"], beta=0.8).square().sum()

    eager = torch.autograd.grad(f(x["q"], x["k"], x["v"]), leaves)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    for got, want in zip(torch.autograd.grad(compiled(x["q"], x["k"], x["v"]), leaves), eager):
        torch.testing.assert_close(got, want)


def test_cpu_tensors_take_the_reference_on_the_views(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # (the interpreter off: CPU tensors are not the kernels')
    x = _paired_inputs(CASES["gqa_Tq37_Tk90"], seed=3)
    leaves = [x["q"], x["k"], x["v"], x["lam"]]
    out = kernels.threshold_attention_paired(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"])
    apart = kernels.threshold_attention(*_views(x), lam=x["lam"], beta=x["beta"])
    assert torch.equal(out, apart)
    do = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, leaves, do), torch.autograd.grad(apart, leaves, do)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("q_shape,k_shape,match", [
    ((1, 3, 16, 32), (1, 4, 16, 32), r"q holds the two views.*even; got shape \(1, 3, 16, 32\)"),
    ((1, 4, 16, 32), (1, 2, 16), r"k must have 4 dimensions.*got shape \(1, 2, 16\)"),
])
def test_an_odd_head_count_or_a_bad_shape_is_refused_naming_the_tensor(q_shape, k_shape, match):
    q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(1, 2, 16, 32)
    with pytest.raises(ValueError, match=match):
        paired_threshold_attention_triton(q, k, v, lam=0.5)


def test_a_bad_view_is_refused_by_the_views_checks():
    q, k, v = torch.randn(1, 4, 16, 32), torch.randn(1, 4, 16, 32), torch.randn(1, 2, 20, 32)
    with pytest.raises(ValueError, match=r"v must be \(B=1, Hkv=2, Tk=16, dv\), got \(1, 2, 20, 32\)"):
        paired_threshold_attention_triton(q, k, v, lam=0.5)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        paired_threshold_attention_triton([1.0], k, v, lam=0.5)


GPU_CASES = {
    "d64_bf16_T4096": Case(T=4096, d=64, dv=128, H=4, lam=(0.5, 0.1), dtype=torch.bfloat16),
    "d128_bf16_T2048_gqa": Case(T=2048, d=128, dv=256, H=4, Hkv=2, lam=(0.3, 0.9), dtype=torch.bfloat16),
    "d64_fp32_Tq500_Tk1500": Case(T=1500, Tq=500, d=64, dv=128, H=2, dtype=torch.float32),
}


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_paired_entry_on_gpu(name, deterministic):
    """On a GPU, with the default kernels (the Gluon ones on Hopper): the paired entry's output and its gradients of
    v, k, λ and β are the views' bits; dQ, added up by atomics in an order that changes from run to run, agrees to
    within its dtype's rounding, and deterministically is the same bits too."""
    case = GPU_CASES[name]
    x = _paired_inputs(case, seed=sum(map(ord, name)), beta_grad=True)
    x = {n: t.detach().cuda().requires_grad_(t.requires_grad) for n, t in x.items()}
    leaves = [x["q"], x["k"], x["v"], x["lam"], x["beta"]]
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = kernels.threshold_attention_paired(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"])
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, do)
        apart = kernels.threshold_attention(*_views(x), lam=x["lam"], beta=x["beta"])
        grads_apart = torch.autograd.grad(apart, leaves, do)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(out, apart)
    for got, leaf in zip(grads[:3], leaves[:3]):
        assert got.stride() == leaf.stride()
    for name_, got, want in zip(("q", "k", "v", "lam", "beta"), grads, grads_apart):
        if name_ == "q" and not deterministic:
            scale = want.float().abs().max()
            assert (got.float() - want.float()).abs().max() <= 1e-2 * scale, name_
        else:
            assert torch.equal(got, want), name_
