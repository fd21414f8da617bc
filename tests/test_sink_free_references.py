"""The exact PyTorch references of the one-view score ops (kernels/sigmoid/reference.py, kernels/softpick/reference.py,
kernels/sink_softmax/reference.py) beyond the model tests: scores where the plain softpick formula overflows, decoding
rows aligned to the end of the keys, grouped key/value heads, non-causal maps, a score scale other than 1/√d,
autocast, bad arguments."""
import pytest
import torch

from kernels import (sigmoid_attention_reference, sigmoid_attention_weights, sink_softmax_attention_reference,
                     softpick_attention_reference, softpick_attention_weights)
from tests import naive


def rel_err(a, b):
    return float((a - b).detach().double().norm() / b.detach().double().norm().clamp_min(1e-300))


def tensors(T=40, d=16, dtype=torch.float64, seed=0, heads=3, kv_heads=3, queries=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, queries or T, d, generator=gen).to(dtype)
    return [q] + [torch.randn(2, kv_heads, T, d, generator=gen).to(dtype) for _ in range(2)]


def float64_map(name, q, k, param, scale, causal=True):
    """The map written from SPEC, float64, materialised; grouped key heads repeated; any scale."""
    q, k = q.double(), k.double().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    x = scale * (q @ k.transpose(-1, -2))
    keep = naive.causal_keep(q.shape[2], k.shape[2]) if causal else torch.ones(q.shape[2], k.shape[2], dtype=bool)
    if name == "sigmoid":
        return torch.sigmoid(x + naive.per_head(param)) * keep
    if name == "softpick":
        u = (torch.exp(x) - 1) * keep
        return torch.relu(u) / (u.abs().sum(-1, keepdim=True) + param)
    e = torch.exp(x) * keep
    return e / (torch.exp(naive.per_head(param)) + e.sum(-1, keepdim=True))


def reference(name, q, k, v, param, scale, causal=True):
    if name == "sigmoid":
        return sigmoid_attention_reference(q, k, v, param, scale=scale, causal=causal)
    if name == "softpick":
        return softpick_attention_reference(q, k, v, scale=scale, eps=param, causal=causal)
    return sink_softmax_attention_reference(q, k, v, param, scale=scale, causal=causal)


NAMES = ["sigmoid", "softpick", "sink_softmax"]


def param_for(name, H=3):
    if name == "softpick":
        return 1e-6
    return torch.randn(H, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_softpick_is_exact_where_the_plain_formula_overflows_float32():
    q, k, v = tensors(dtype=torch.float32)
    q = (40.0 * q).requires_grad_()   # scores beyond 88: e^x overflows float32
    k.requires_grad_()
    v.requires_grad_()
    x, _ = naive.scores(q, k)
    assert torch.isinf(torch.exp(x.float())).any()
    out = softpick_attention_reference(q, k, v, scale=0.25, eps=1e-6)
    ref = naive.softpick_map(q, k, 1e-6) @ v.double()   # scale 0.25 = 1/√d, as naive.scores
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5
    probe = torch.randn_like(ref)
    got = torch.autograd.grad((out.double() * probe).sum(), (q, k, v))
    want = torch.autograd.grad((ref * probe).sum(), (q, k, v))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and rel_err(g, w) < 1e-4


@pytest.mark.parametrize("path", ["reference", "triton"])
def test_softpick_gradient_takes_the_branch_of_a_tiny_positive_score_in_float32(path):
    """A score of 1e-7 beside one of 5 in its row: in float32 e^{x−m} − e^{−m} rounds to 0 there (the shift m = 5),
    yet the score is positive, so its weight's gradient is e^x/N · (dW − Δ), not 0; key 2 is seen by that row alone,
    so a gradient that dropped it would leave dK of key 2 at 0. Every row holds a negative score too (row 0 only
    one), so no row's weights sum to about 1, where softpick's gradient is ill-conditioned (README, "Conditioning").
    Float32 must give float64's gradients, on the reference and on the Triton kernels (interpreted on the CPU)."""
    from kernels.common import interpreting
    from kernels.softpick.autograd import softpick_attention_triton

    if path == "triton" and not interpreting():
        pytest.skip("the Triton kernels take CPU tensors only under TRITON_INTERPRET=1")
    attention = softpick_attention_reference if path == "reference" else softpick_attention_triton
    d = 16
    q = torch.zeros(1, 1, 3, d)
    k = torch.zeros(1, 1, 3, d)
    q[0, 0, :, 0] = torch.tensor([-1.0, 1.0, 1.0])
    k[0, 0, :, 0] = torch.tensor([5.0, -2.0, 1e-7]) * d ** 0.5   # scores ±5, ∓2 and 1e-7 (scale 1/√d)
    k[0, 0, :, 1] = 0.3                # q and k otherwise orthogonal: the scores stay as set
    v = torch.randn(1, 1, 3, d, generator=torch.Generator().manual_seed(3))
    x, _ = naive.scores(q, k)
    assert float(x[0, 0, 2, 2]) > 0 and float(torch.exp(x[0, 0, 2, 2].float() - 5) - torch.exp(torch.tensor(-5.0))) == 0
    probe = torch.randn(1, 1, 3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    leaves32 = [t.clone().requires_grad_() for t in (q, k, v)]
    leaves64 = [t.double().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad((attention(*leaves32, eps=1e-6).double() * probe).sum(), leaves32)
    want = torch.autograd.grad(((naive.softpick_map(*leaves64[:2], 1e-6) @ leaves64[2]) * probe).sum(), leaves64)
    assert float(want[1][0, 0, 2].abs().max()) > 1e-4   # key 2's gradient is not 0
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-4


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_grouped_heads_other_scale_and_both_maskings_match_the_formula(name, causal):
    """Two key/value heads for six query heads, 12 queries against 40 keys, scale 0.3: output and every gradient
    (the parameter's too) against the float64 formula."""
    q, k, v = (t.requires_grad_() for t in tensors(heads=6, kv_heads=2, queries=12))
    param = param_for(name, 6)
    if isinstance(param, torch.Tensor):
        param.requires_grad_()
    out = reference(name, q, k, v, param, 0.3, causal)
    ref = float64_map(name, q, k, param, 0.3, causal) @ v.double().repeat_interleave(3, dim=1)
    assert rel_err(out, ref) < 1e-12
    leaves = [t for t in (q, k, v, param) if isinstance(t, torch.Tensor)]
    probe = torch.randn_like(ref)
    for g, w in zip(torch.autograd.grad((out * probe).sum(), leaves), torch.autograd.grad((ref * probe).sum(), leaves)):
        assert rel_err(g, w) < 1e-10


@pytest.mark.parametrize("name", ["sigmoid", "softpick"])
def test_decoding_rows_see_every_key(name):
    """Tq < Tk: query row r has position r + Tk − Tq, so the last rows alone give the full run's last rows, and the
    weights of those rows times v give them too."""
    q, k, v = tensors()
    param = param_for(name)
    full = reference(name, q, k, v, param, 0.25)
    last = reference(name, q[:, :, -3:], k, v, param, 0.25)
    assert rel_err(last, full[:, :, -3:]) < 1e-13
    weights = (sigmoid_attention_weights(q[:, :, -3:], k, param, scale=0.25) if name == "sigmoid"
               else softpick_attention_weights(q[:, :, -3:], k, scale=0.25, eps=param))
    assert weights.shape == (2, 3, 3, 40) and rel_err(weights @ v, last) < 1e-13
    assert rel_err(weights, float64_map(name, q[:, :, -3:], k, param, 0.25)) < 1e-12


@pytest.mark.parametrize("name", ["sigmoid", "softpick"])
def test_autocast_does_not_reach_inside(name):
    """Under bf16 autocast the arithmetic stays float32: the result is the float32 computation on the same bf16
    inputs, rounded once to bf16, and so are the gradients."""
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in tensors())
    param = param_for(name)
    param = param.float() if isinstance(param, torch.Tensor) else param
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reference(name, q, k, v, param, 0.25)
        got = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    wide = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = reference(name, *wide, param, 0.25)
    want = torch.autograd.grad(ref.to(torch.bfloat16).float().square().sum(), wide)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))
    for g, w in zip(got, want):
        assert torch.equal(g, w.to(torch.bfloat16))


def test_sigmoid_bias_as_float_zero_d_and_per_head_agree():
    """A shared bias (float or 0-d tensor) is the per-head vector of equal values; the 0-d tensor's gradient is the
    sum of the per-head ones."""
    q, k, v = tensors()
    scalar = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    heads = torch.full((3,), -1.5, dtype=torch.float64, requires_grad=True)
    a = sigmoid_attention_reference(q, k, v, -1.5, scale=0.25)
    b = sigmoid_attention_reference(q, k, v, scalar, scale=0.25)
    c = sigmoid_attention_reference(q, k, v, heads, scale=0.25)
    assert torch.equal(a, b) and torch.equal(b, c)
    b.square().sum().backward()
    c.square().sum().backward()
    assert torch.allclose(scalar.grad, heads.grad.sum()) and heads.grad.abs().min() > 0


def test_the_sink_reference_gives_the_sink_logit_any_scale():
    """With a score scale other than 1/√d the sink key still scores s_h exactly (its channel carries s_h / scale)."""
    q, k, v = tensors(d=24)
    sink = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    out = sink_softmax_attention_reference(q, k, v, sink, scale=0.11)
    assert rel_err(out, float64_map("sink_softmax", q, k, sink, 0.11) @ v) < 1e-12
