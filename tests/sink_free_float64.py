"""Test support for the one-view score kernels (sigmoid, softpick, softmax with a sink): naive, fully materialised
float64 maps written from SPEC §2, input generators with NaN guard bands, and a forward+backward comparison of a
kernel entry point with the float64 maps. Shared by test_sink_free_triton.py and test_sink_free_gpu.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from kernels import common

OPS = ("sigmoid", "softpick", "sink_softmax")


def naive_map(op: str, q, k, param, scale: float, causal: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(B, H, Tq, Tk) float64 weights of ``op``; grouped key heads repeated; queries aligned to the end of the keys;
    param: the (H,) bias (sigmoid) or sink logits (sink_softmax), unused by softpick. Written as SPEC writes them
    (softpick and the sink without any shift)."""
    H = q.shape[1]
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    Tq, Tk = q.shape[2], k.shape[2]
    x = scale * (q @ k.transpose(-1, -2))
    keep = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        keep = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
    if op == "sigmoid":
        return torch.sigmoid(x + param.reshape(1, H, 1, 1)) * keep
    if op == "softpick":
        u = torch.expm1(x) * keep
        return torch.relu(u) / (u.abs().sum(-1, keepdim=True) + eps)
    e = torch.exp(x) * keep
    return e / (torch.exp(param.reshape(1, H, 1, 1)) + e.sum(-1, keepdim=True))


@dataclass
class Case:
    """One configuration of the kernels' inputs."""

    T: int = 64                 # keys
    d: int = 32
    dv: int = 32
    H: int = 2
    Hkv: int = 2
    B: int = 1
    Tq: int | None = None       # None: Tq = T
    causal: bool = True
    dtype: torch.dtype = torch.float32
    score: float = 2.5          # spread of the scores: q·k·scale has standard deviation about this
    layout: str = "guarded"     # "guarded": NaN-surrounded strided buffers; "projection": (B, T, H, d) viewed
    eps: float = 1e-6           # softpick's ε


def guarded(data: torch.Tensor, guard: int = 3) -> torch.Tensor:
    """A leaf holding ``data`` (B, H, T, d) inside a NaN-filled buffer (an extra head, ``guard`` rows either side, a
    padded head dimension), so any read outside it gives NaN; no stride is contiguous."""
    B, H, T, d = data.shape
    buf = torch.full((B, H + 1, T + 2 * guard, d + 5), float("nan"), dtype=data.dtype, device=data.device)
    view = buf[:, 1:, guard:guard + T, :d]
    view.copy_(data)
    return view.detach().requires_grad_()


def projection(data: torch.Tensor) -> torch.Tensor:
    """The same values as a (B, T, H, d) tensor viewed as (B, H, T, d), as the model's projections are."""
    return data.transpose(1, 2).contiguous().transpose(1, 2).detach().requires_grad_()


def make_inputs(case: Case, op: str, seed: int, device: str = "cpu") -> dict:
    """q, k, v leaves rounded to case.dtype and laid out as case.layout says, and the (H,) fp32 parameter (bias around
    −ln T for sigmoid, sink logits around 0.5, None for softpick). The scores spread over several units, so the
    sigmoid's weights cover both tails, softpick keeps a real share of positive scores and the sink matters (e^s_h
    around e^{score²/2}·T, a row's expected Σ_j e^x)."""
    g = torch.Generator().manual_seed(seed)
    Tq = case.Tq or case.T
    scale = case.d ** -0.5
    # q·k·scale ~ N(0, score²): q, k of unit-variance entries times sqrt(score)
    width = case.score ** 0.5
    q = torch.randn(case.B, case.H, Tq, case.d, generator=g, dtype=torch.float64) * width
    k = torch.randn(case.B, case.Hkv, case.T, case.d, generator=g, dtype=torch.float64) * width
    v = torch.randn(case.B, case.Hkv, case.T, case.dv, generator=g, dtype=torch.float64)
    place = guarded if case.layout == "guarded" else projection
    out = {name: place(x.to(device, case.dtype)) for name, x in (("q", q), ("k", k), ("v", v))}
    out["scale"] = scale
    if op == "sigmoid":
        out["param"] = (torch.randn(case.H, generator=g) - torch.log(torch.tensor(float(case.T)))).to(device)
    elif op == "sink_softmax":  # e^s_h of the order of the rows' sums of e^x: the sink takes a real share
        log_sum = case.score ** 2 / 2 + torch.log(torch.tensor(float(case.T)))
        out["param"] = (torch.randn(case.H, generator=g) + log_sum).to(device)
    else:
        out["param"] = None
    return out


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a − ref|| / ||ref|| in float64 (NaN anywhere gives NaN, which fails any bound)."""
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm()).item()


def call(fn, op: str, q, k, v, param, scale: float, causal: bool, eps: float = 1e-6):
    """``fn`` with the op's signature: (q, k, v, bias) for sigmoid, (q, k, v, eps=) for softpick, (q, k, v, sink)."""
    if op == "softpick":
        return fn(q, k, v, scale=scale, causal=causal, eps=eps)
    return fn(q, k, v, param, scale=scale, causal=causal)


def run_and_compare(fn, op: str, case: Case, inputs: dict, seed: int) -> dict:
    """Forward and backward of ``fn`` on ``inputs`` with a NaN-guarded random output gradient, then the same on the
    float64 maps. Returns {name: relative error} for the output and the gradients of q, k, v and the parameter;
    the output and gradients are kept under "got" for further checks."""
    tensors = {n: inputs[n] for n in ("q", "k", "v")}
    for x in tensors.values():
        x.grad = None
    param = inputs["param"].clone().requires_grad_() if inputs["param"] is not None else None
    out = call(fn, op, tensors["q"], tensors["k"], tensors["v"], param, inputs["scale"], case.causal, case.eps)
    g = torch.Generator().manual_seed(seed + 1)
    do = guarded(torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)).detach()
    out.backward(do)

    ref_in = {n: x.detach().double().requires_grad_() for n, x in tensors.items()}
    ref_param = param.detach().double().requires_grad_() if param is not None else None
    H = ref_in["q"].shape[1]
    ref = naive_map(op, ref_in["q"], ref_in["k"], ref_param, inputs["scale"], case.causal, case.eps) \
        @ ref_in["v"].repeat_interleave(H // ref_in["v"].shape[1], dim=1)
    ref.backward(do.double())
    errors = {"out": rel_err(out, ref)}
    for n in tensors:
        errors["d" + n] = rel_err(tensors[n].grad, ref_in[n].grad)
    if param is not None:
        errors["dparam"] = rel_err(param.grad, ref_param.grad)
    errors["got"] = {"out": out.detach(), **{n: tensors[n].grad.clone() for n in tensors},
                     "param": None if param is None else param.grad.clone()}
    return errors


def within(errors: dict, dtype: torch.dtype) -> dict:
    """The errors above SPEC §3's bound for ``dtype`` (fp32 1e-4, 16-bit 1e-2); empty when all are within."""
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    return {k: v for k, v in errors.items() if k != "got" and not v <= tol}


def weight_shares(op: str, case: Case, inputs: dict) -> dict:
    """What the inputs exercise, over the visible entries: for sigmoid the share of weights above 1/2 and below
    1/100 (both tails), for softpick the share of positive scores (non-zero weights), for the sink the smallest and
    largest share of a row's mass the sink takes."""
    q, k = inputs["q"].detach().double(), inputs["k"].detach().double()
    param = inputs["param"].double() if inputs["param"] is not None else None
    H = q.shape[1]
    Tq, Tk = q.shape[2], k.shape[2]
    keep = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if case.causal:
        keep = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
    x = inputs["scale"] * (q @ k.repeat_interleave(H // k.shape[1], dim=1).transpose(-1, -2))
    visible = keep.expand_as(x)
    if op == "sigmoid":
        w = torch.sigmoid(x + param.reshape(1, H, 1, 1))[visible]
        return {"high": float((w > 0.5).double().mean()), "low": float((w < 0.01).double().mean())}
    if op == "softpick":
        return {"positive": float((x[visible] > 0).double().mean())}
    mass = 1.0 - naive_map(op, q, k, param, inputs["scale"], case.causal).sum(-1)
    return {"sink_min": float(mass.min()), "sink_max": float(mass.max())}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element the kernels do not write fails the test."""
    def nan_output(shape, dtype, device, strides=None):
        if strides is None:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.empty_strided(shape, strides, dtype=dtype, device=device).fill_(float("nan"))
    monkeypatch.setattr(common, "new_output", nan_output)
