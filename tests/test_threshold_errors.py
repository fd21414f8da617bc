"""Bad input to the Triton path raises a clear TypeError/ValueError naming the argument, before any
kernel is launched."""

import pytest
import torch

from kernels.threshold import launch
from kernels.threshold.autograd import threshold_attention_triton
from kernels.threshold.options import ThresholdOptions


@pytest.fixture(autouse=True)
def no_launch(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")
    monkeypatch.setattr(launch, "forward", refuse)


def _good(T=8, d=16, dv=32, H=2, Hkv=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = lambda h, n: torch.randn(1, h, T, n, generator=g).to(dtype)  # noqa: E731
    return dict(q1=q(H, d), k1=q(Hkv, d), v=q(Hkv, dv), q2=q(H, d), k2=q(Hkv, d))


def _call(**changes):
    args = _good()
    kwargs = dict(lam=0.5, beta=1.0)
    options = dict(p=2.0, normalize=True, scale=1.0, causal=True)
    for key, value in changes.items():
        (args if key in args else options if key in options else kwargs)[key] = value
    return threshold_attention_triton(args["q1"], args["k1"], args["v"], args["q2"], args["k2"],
                                      options=ThresholdOptions(**options), **kwargs)


BAD = [
    (dict(k2=None), ValueError, "q2 and k2"),
    (dict(q1=[[1.0]]), TypeError, "q1"),
    (dict(v=torch.randn(1, 2, 8)), ValueError, "v must have 4 dimensions"),
    (dict(q1=torch.randn(1, 2, 8, 16, dtype=torch.float64)), TypeError, "q1 has dtype"),
    (dict(k1=torch.randn(1, 2, 8, 16).half()), TypeError, "k1 has dtype"),
    (dict(v=torch.ones(1, 2, 8, 32, dtype=torch.int32)), TypeError, "v has dtype"),
    (dict(k2=torch.randn(1, 2, 8, 16, device="meta")), ValueError, "k2 is on meta"),
    (dict(k1=torch.randn(2, 2, 8, 16)), ValueError, "k1 must be"),
    (dict(k1=torch.randn(1, 3, 8, 16), k2=torch.randn(1, 3, 8, 16), v=torch.randn(1, 3, 8, 32)),
     ValueError, "k1 has 3 heads"),
    (dict(k1=torch.randn(1, 2, 4, 16), k2=torch.randn(1, 2, 4, 16), v=torch.randn(1, 2, 4, 32)),
     ValueError, "fewer than q1"),
    (dict(v=torch.randn(1, 2, 9, 32)), ValueError, "v must be"),
    (dict(q2=torch.randn(1, 2, 8, 32)), ValueError, "q2 must have"),
    (dict(k2=torch.randn(1, 2, 8, 32)), ValueError, "k2 must have"),
    (dict(q1=torch.randn(1, 2, 8, 8), k1=torch.randn(1, 2, 8, 8), q2=torch.randn(1, 2, 8, 8),
          k2=torch.randn(1, 2, 8, 8)), ValueError, "q1 head dimension is 8"),
    (dict(v=torch.randn(1, 2, 8, 264)), ValueError, "v head dimension is 264"),
    (dict(q1=torch.randn(1, 2, 0, 16), q2=torch.randn(1, 2, 0, 16)), ValueError, "q1 must not be empty"),
    (dict(lam=None), ValueError, "lam is required"),
    (dict(lam=torch.ones(3)), ValueError, "lam must be"),
    (dict(lam=torch.ones(2, dtype=torch.int64)), TypeError, "lam must be a floating-point"),
    (dict(beta=torch.ones(2, 2)), ValueError, "beta must be"),
    (dict(beta="1"), TypeError, "beta must be a real number"),
    (dict(beta=float("nan")), ValueError, "beta must be finite"),
    (dict(p=0.5), ValueError, "p must be >= 1"),
    (dict(p=float("inf")), ValueError, "p must be finite"),
    (dict(p=None), TypeError, "p must be a real number"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
    (dict(normalize=1), TypeError, "normalize must be a bool"),
    (dict(causal="yes"), TypeError, "causal must be a bool"),
]


@pytest.mark.parametrize("changes,error,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises_before_launch(changes, error, message):
    with pytest.raises(error, match=message):
        _call(**changes)


def test_lam_with_one_view_is_refused():
    args = _good()
    with pytest.raises(ValueError, match="lam applies only with two views"):
        threshold_attention_triton(args["q1"], args["k1"], args["v"], lam=0.5)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="q1 is on cpu: the Triton kernels need CUDA tensors"):
        _call()
