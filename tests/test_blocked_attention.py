"""model.blocked_attention (sigmoid and softpick in PyTorch) beyond the model tests: scores where the plain
softpick formula overflows, decoding rows aligned to the end of the keys, autocast, bad arguments."""
import pytest
import torch

from model.blocked_attention import blocked_attention, blocked_attention_weights
from tests import naive

RULES = {"sigmoid": lambda q, k, bias: naive.sigmoid_map(q, k, bias),
         "softpick": lambda q, k, bias: naive.softpick_map(q, k, 1e-6)}


def rel_err(a, b):
    return float((a - b).detach().double().norm() / b.detach().double().norm().clamp_min(1e-300))


def tensors(T=40, d=16, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, T, d, generator=gen).to(dtype) for _ in range(3)]


def arguments(rule, dtype=torch.float64):
    return dict(scale=0.25, bias=torch.randn(3, dtype=dtype) if rule == "sigmoid" else None,
                eps=1e-6 if rule == "softpick" else 0.0)


def test_softpick_is_exact_where_the_plain_formula_overflows_float32():
    q, k, v = tensors(dtype=torch.float32)
    q = (40.0 * q).requires_grad_()   # scores beyond 88: e^x overflows float32
    k.requires_grad_()
    v.requires_grad_()
    x, _ = naive.scores(q, k)
    assert torch.isinf(torch.exp(x.float())).any()
    out = blocked_attention("softpick", q, k, v, scale=0.25, eps=1e-6)
    ref = naive.softpick_map(q, k, 1e-6) @ v.double()   # scale 0.25 = 1/√d, as naive.scores
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5
    probe = torch.randn_like(ref)
    got = torch.autograd.grad((out.double() * probe).sum(), (q, k, v))
    want = torch.autograd.grad((ref * probe).sum(), (q, k, v))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and rel_err(g, w) < 1e-4


@pytest.mark.parametrize("rule", sorted(RULES))
def test_decoding_rows_see_every_key(rule):
    """Tq < Tk: query row r has position r + Tk − Tq, so the last rows alone give the full run's last rows."""
    q, k, v = tensors()
    args = arguments(rule)
    full = blocked_attention(rule, q, k, v, **args)
    last = blocked_attention(rule, q[:, :, -3:], k, v, **args)
    assert rel_err(last, full[:, :, -3:]) < 1e-13
    weights = blocked_attention_weights(rule, q[:, :, -3:], k, **args)
    assert weights.shape == (2, 3, 3, 40) and rel_err(weights @ v, last) < 1e-13
    bias = args["bias"] if rule == "sigmoid" else None
    assert rel_err(weights, RULES[rule](q[:, :, -3:], k, bias)) < 1e-12


@pytest.mark.parametrize("rule", sorted(RULES))
def test_autocast_does_not_reach_inside(rule):
    """Under bf16 autocast the arithmetic stays float32: the result is the float32 computation on the same
    bf16 inputs, rounded once to bf16, and so are the gradients."""
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in tensors())
    args = arguments(rule, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = blocked_attention(rule, q, k, v, **args)
        got = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    wide = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = blocked_attention(rule, *wide, **args)
    want = torch.autograd.grad(ref.to(torch.bfloat16).float().square().sum(), wide)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))
    for g, w in zip(got, want):
        assert torch.equal(g, w.to(torch.bfloat16))


def test_bad_arguments_are_value_errors():
    q, k, v = tensors()
    with pytest.raises(ValueError, match="unknown rule 'relu'"):
        blocked_attention("relu", q, k, v, scale=1.0)
    with pytest.raises(ValueError, match="'sigmoid' needs"):
        blocked_attention("sigmoid", q, k, v, scale=1.0)
    with pytest.raises(ValueError, match="'softpick' takes no"):
        blocked_attention_weights("softpick", q, k, scale=1.0, bias=torch.zeros(3))
