"""Test support for the Triton kernels: a naive, fully materialised float64 threshold attention
(SPEC §1), input generators with NaN guard bands, and error measures. Shared by test_kernels_*.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from kernels import common
from kernels.threshold.options import ThresholdOptions


def naive_maps(q, k, beta, p, normalize, scale, causal):
    """(a, u) over (B, H, Tq, Tk) in float64: a = max(u, 0)^p (0 where masked), u = s - tau."""
    if normalize:
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
    H, Tq, Tk, d = q.shape[1], q.shape[2], k.shape[2], q.shape[-1]
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    pos = torch.arange(Tq, dtype=torch.float64, device=q.device) + (Tk - Tq)
    tau = beta.reshape(1, H, 1, 1) * torch.sqrt(2 * torch.log(pos + 1) / d).reshape(1, 1, Tq, 1)
    u = scale * (q @ k.transpose(-1, -2)) - tau
    keep = u > 0
    if causal:
        keep = keep & (torch.arange(Tk, device=q.device)[None, :] <= pos[:, None])
    a = torch.where(keep, u, torch.zeros((), dtype=torch.float64, device=q.device)) ** p
    return a, u


def naive_attention(q1, k1, v, q2=None, k2=None, lam=None, beta=None, p=2.0, normalize=True,
                    scale=1.0, causal=True):
    """Float64 output (B, H, Tq, dv); differentiable in every tensor argument (lam, beta (H,))."""
    H = q1.shape[1]
    a = naive_maps(q1, k1, beta, p, normalize, scale, causal)[0]
    if q2 is not None:
        a = a - lam.reshape(1, H, 1, 1) * naive_maps(q2, k2, beta, p, normalize, scale, causal)[0]
    return a @ v.repeat_interleave(H // v.shape[1], dim=1)


@dataclass
class Case:
    """One configuration of the kernels' inputs."""

    T: int = 64
    d: int = 32
    dv: int = 32
    H: int = 2
    Hkv: int = 2
    two_views: bool = True
    beta: tuple = (1.0,)
    lam: tuple = (0.5,)
    p: float = 2.0
    normalize: bool = True
    scale: float = 1.0
    causal: bool = True
    Tq: int | None = None   # None: Tq = T (= Tk)
    strength: tuple = (0.4, 2.5)  # range of the shared direction's weight in q and k (see correlated)
    B: int = 1
    dtype: torch.dtype = torch.float32


def guarded(shape, data: torch.Tensor, guard: int = 3) -> torch.Tensor:
    """A leaf tensor holding ``data`` inside a NaN-filled buffer (an extra head, ``guard`` rows either
    side, padded head dim), so any read outside the tensor produces NaN; strides are not contiguous."""
    B, H, T, d = shape
    buf = torch.full((B, H + 1, T + 2 * guard, d + 5), float("nan"), dtype=data.dtype,
                     device=data.device)
    view = buf[:, 1:, guard:guard + T, :d]
    view.copy_(data)
    return view.detach().requires_grad_()


def aligned_guarded(shape, data: torch.Tensor, guard: int = 3) -> torch.Tensor:
    """As ``guarded``, with the padded head dimension rounded up so that every stride is a multiple of
    16 bytes (what tensor descriptors need); NaN still surrounds the data on every side."""
    B, H, T, d = shape
    per16 = 16 // data.element_size()
    width = -(-(d + 5) // per16) * per16
    buf = torch.full((B, H + 1, T + 2 * guard, width), float("nan"), dtype=data.dtype, device=data.device)
    view = buf[:, 1:, guard:guard + T, :d]
    view.copy_(data)
    return view.detach().requires_grad_()


def correlated(direction: torch.Tensor, B: int, T: int, generator: torch.Generator,
               strength: tuple = (0.4, 2.5)) -> torch.Tensor:
    """Rows rho * direction + noise, float64 (B, heads, T, d), for unit directions (1, heads, 1, d)
    scaled by sqrt(d) and per-row rho drawn uniformly from ``strength``: cosines between two such
    rows spread over roughly 0.1 ... 0.9, so a real share of scores clears tau."""
    _, H, _, d = direction.shape
    lo, hi = strength
    rho = lo + (hi - lo) * torch.rand(B, H, T, 1, generator=generator, dtype=torch.float64)
    noise = torch.randn(B, H, T, d, generator=generator, dtype=torch.float64)
    return rho * direction * math.sqrt(d) + noise


def projection_layout(t: torch.Tensor) -> torch.Tensor:
    """The same values as a (B, T, H, d) tensor viewed as (B, H, T, d), as the model's projections are: a new leaf."""
    return t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()


def in_projection_layout(inputs: dict, names=("q1", "k1", "v", "q2", "k2")) -> dict:
    """``inputs`` with the tensors ``names`` replaced by projection_layout copies (in place; returned)."""
    for n in names:
        inputs[n] = projection_layout(inputs[n])
    return inputs


def make_inputs(case: Case, seed: int, device: str = "cpu") -> dict:
    """Fresh random inputs for ``case`` as guarded leaves rounded to case.dtype, plus lam and beta as
    (H,) fp32 tensors. Queries of a head correlate with the keys of its key/value head."""
    g = torch.Generator().manual_seed(seed)
    Tk, Tq = case.T, case.Tq or case.T
    group = case.H // case.Hkv
    out = {}
    for view in ("1", "2") if case.two_views else ("1",):
        direction = torch.randn(1, case.Hkv, 1, case.d, generator=g, dtype=torch.float64)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        q = correlated(direction.repeat_interleave(group, dim=1), case.B, Tq, g, case.strength)
        k = correlated(direction, case.B, Tk, g, case.strength)
        out["q" + view] = guarded(q.shape, q.to(device, case.dtype))
        out["k" + view] = guarded(k.shape, k.to(device, case.dtype))
    v = torch.randn(case.B, case.Hkv, Tk, case.dv, generator=g, dtype=torch.float64)
    out["v"] = guarded(v.shape, v.to(device, case.dtype))
    out["beta"] = torch.tensor(_per_head(case.beta, case.H), dtype=torch.float32, device=device)
    if case.two_views:
        out["lam"] = torch.tensor(_per_head(case.lam, case.H), dtype=torch.float32, device=device)
    return out


@dataclass(frozen=True)
class Plant:
    """Weights that survive in planted inputs: every causal pair of query ``rows`` and ``keys`` (ranges of indices) of
    view ``view`` in query heads ``heads`` (None: all)."""

    view: int
    rows: range
    keys: range
    heads: tuple | None = None


def planted_inputs(case: Case, plants: list[Plant], seed: int, device: str = "cpu") -> dict:
    """Inputs (as make_inputs) for TDA/TRA with normalisation, 0 <= beta <= 1, d >= 32 and positions below 1024, in
    which a weight survives exactly at the causal pairs of ``plants`` (distinct rows and keys per view and head), every
    other score lying far below the threshold: per (batch, key/value head, view), with e and f_1, f_2, ... orthonormal,
    background keys are e and queries -e (cosine -1), a plant's keys f_p + 0.5 e and its queries f_p - 0.3 e (cosine
    0.73 with each other, above every tau_i = sqrt(2 ln(i + 1) / d), at most 0.66 there; -0.29, -0.45, -0.13 against
    the background keys, background queries and other plants' keys), each row scaled by a random norm. Whole tiles are
    empty."""
    g = torch.Generator().manual_seed(seed)
    Tk, Tq = case.T, case.Tq or case.T
    group = case.H // case.Hkv
    out = {}
    for view in (1, 2) if case.two_views else (1,):
        mine = [p for p in plants if p.view == view]
        basis = torch.linalg.qr(torch.randn(case.B, case.Hkv, case.d, case.d, generator=g, dtype=torch.float64))[0]
        e = basis[..., 0]  # (B, Hkv, d)
        k = e[:, :, None, :].expand(case.B, case.Hkv, Tk, case.d).clone()
        q = -e.repeat_interleave(group, dim=1)[:, :, None, :].expand(case.B, case.H, Tq, case.d).clone()
        for i, plant in enumerate(mine, start=1):
            for h in plant.heads if plant.heads is not None else range(case.H):
                f = basis[:, h // group, :, i]
                k[:, h // group, plant.keys] = (f + 0.5 * e[:, h // group])[:, None, :]
                q[:, h, plant.rows] = (f - 0.3 * e[:, h // group])[:, None, :]
        for name, x in (("q", q), ("k", k)):
            x = x * (0.5 + 1.5 * torch.rand(x.shape[:3] + (1,), generator=g, dtype=torch.float64))
            out[f"{name}{view}"] = guarded(x.shape, x.to(device, case.dtype))
    v = torch.randn(case.B, case.Hkv, Tk, case.dv, generator=g, dtype=torch.float64)
    out["v"] = guarded(v.shape, v.to(device, case.dtype))
    out["beta"] = torch.tensor(_per_head(case.beta, case.H), dtype=torch.float32, device=device)
    if case.two_views:
        out["lam"] = torch.tensor(_per_head(case.lam, case.H), dtype=torch.float32, device=device)
    return out


def cell_support(inputs: dict, case: Case, rows: int = 64, keys: int = 64) -> torch.Tensor:
    """Per (batch, query head, tile of ``rows`` x ``keys``): whether any weight survives in either view (float64
    naive maps), bool (B, H, ceil(Tq / rows), ceil(Tk / keys))."""
    support = 0
    for view in ("1", "2") if case.two_views else ("1",):
        a, _ = naive_maps(inputs["q" + view].detach().double(), inputs["k" + view].detach().double(),
                          inputs["beta"].double(), case.p, case.normalize, case.scale, case.causal)
        support = (a != 0) | support
    Tq, Tk = support.shape[-2:]
    padded = torch.nn.functional.pad(support.double(), (0, -Tk % keys, 0, -Tq % rows))
    return padded.unfold(-2, rows, rows).unfold(-2, keys, keys).sum((-1, -2)) > 0


def _per_head(values: tuple, H: int) -> list[float]:
    return [values[h % len(values)] for h in range(H)]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 (NaN anywhere gives NaN, which fails any bound)."""
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm()).item()


def survivor_shares(inputs: dict, case: Case) -> list[float]:
    """Per view, the share of visible (causal) entries whose weight is non-zero."""
    beta = inputs["beta"].double()
    shares = []
    for view in ("1", "2") if case.two_views else ("1",):
        a, _ = naive_maps(inputs["q" + view].detach().double(), inputs["k" + view].detach().double(),
                          beta, case.p, case.normalize, case.scale, case.causal)
        Tq, Tk = a.shape[-2:]
        visible = Tq * Tk
        if case.causal:
            visible = int((torch.arange(Tk)[None, :] <= torch.arange(Tq)[:, None] + Tk - Tq).sum())
        shares.append(float((a > 0).sum()) / (visible * a.shape[0] * a.shape[1]))
    return shares


def run_kernel(fn, case: Case, inputs: dict, seed: int, beta_grad: bool = True) -> dict:
    """Forward and backward of ``fn`` (threshold_attention_triton's signature) on ``inputs`` with a
    NaN-guarded random output gradient drawn from ``seed``. Returns the tensors involved: out, do,
    the inputs by name (gradients in .grad), lam and beta leaves."""
    names = ["q1", "k1", "v"] + (["q2", "k2"] if case.two_views else [])
    beta = inputs["beta"].clone().requires_grad_(beta_grad)
    lam = inputs["lam"].clone().requires_grad_() if case.two_views else None
    tensors = {n: inputs[n] for n in names}
    for x in tensors.values():
        x.grad = None
    out = fn(tensors["q1"], tensors["k1"], tensors["v"], tensors.get("q2"), tensors.get("k2"),
             lam=lam, beta=beta, options=ThresholdOptions(p=case.p, normalize=case.normalize, scale=case.scale,
                                                          causal=case.causal))
    g = torch.Generator().manual_seed(seed + 1)
    do = guarded(out.shape, torch.randn(out.shape, generator=g, dtype=torch.float64)
                 .to(out.device, out.dtype)).detach()
    out.backward(do)
    return {"out": out, "do": do, "tensors": tensors, "lam": lam, "beta": beta}


def run_and_compare(fn, case: Case, inputs: dict, seed: int, beta_grad: bool = True) -> dict:
    """``run_kernel``, then the same in float64 on the naive implementation.

    Returns {name: error}: relative error for the output and q/k/v gradients; for lam and beta, the
    largest per-head |error| over the sum of the magnitudes of the terms that make that gradient
    (these sums cancel, so a near-zero reference is compared by absolute error on that scale).
    """
    run = run_kernel(fn, case, inputs, seed, beta_grad)
    out, do, tensors, lam, beta = run["out"], run["do"], run["tensors"], run["lam"], run["beta"]
    ref_in = {n: x.detach().double().requires_grad_() for n, x in tensors.items()}
    ref_beta = beta.detach().double().requires_grad_()
    ref_lam = lam.detach().double().requires_grad_() if lam is not None else None
    ref = naive_attention(ref_in["q1"], ref_in["k1"], ref_in["v"], ref_in.get("q2"), ref_in.get("k2"),
                          ref_lam, ref_beta, case.p, case.normalize, case.scale, case.causal)
    ref.backward(do.double())

    errors = {"out": rel_err(out, ref)}
    for n in tensors:
        errors["d" + n] = rel_err(tensors[n].grad, ref_in[n].grad)
    scales = _scalar_grad_scales(ref_in, ref_lam, ref_beta, do.double(), case)
    if lam is not None:
        errors["dlam"] = ((lam.grad.double() - ref_lam.grad).abs() / scales["lam"]).max().item()
    if beta_grad:
        errors["dbeta"] = ((beta.grad.double() - ref_beta.grad).abs() / scales["beta"]).max().item()
    return errors


def _scalar_grad_scales(x: dict, lam, beta, do, case: Case) -> dict:
    """Per head: sum |dA * a2| (dlam's terms) and sum_i g_i sum_j |dS1| + |dS2| (dbeta's terms)."""
    with torch.no_grad():
        H = x["q1"].shape[1]
        dA = do @ x["v"].repeat_interleave(H // x["v"].shape[1], dim=1).transpose(-1, -2)
        Tq, Tk = dA.shape[-2:]
        pos = torch.arange(Tq, dtype=torch.float64, device=dA.device) + Tk - Tq
        g = torch.sqrt(2 * torch.log(pos + 1) / x["q1"].shape[-1]).reshape(1, 1, Tq, 1)
        views = [("q1", "k1", 1.0)] + ([("q2", "k2", lam)] if case.two_views else [])
        beta_terms, lam_terms = 0.0, None
        for qn, kn, weight in views:
            a, u = naive_maps(x[qn], x[kn], beta, case.p, case.normalize, case.scale, case.causal)
            slope = torch.where(a > 0, case.p * u.clamp_min(0) ** (case.p - 1), 0.0)
            w = weight.abs().reshape(1, H, 1, 1) if isinstance(weight, torch.Tensor) else weight
            beta_terms = beta_terms + (g * (w * slope * dA).abs()).sum(dim=(0, 2, 3))
            lam_terms = (dA * a).abs().sum(dim=(0, 2, 3))
        tiny = torch.finfo(torch.float64).tiny
        return {"lam": lam_terms.clamp_min(tiny), "beta": beta_terms.clamp_min(tiny)}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element the kernels do not write fails the test."""
    def nan_output(shape, dtype, device, strides=None):
        if strides is None:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.empty_strided(shape, strides, dtype=dtype, device=device).fill_(float("nan"))
    monkeypatch.setattr(common, "new_output", nan_output)


class DescriptorCount:
    """Wraps a Triton kernel: counts its launches and those that got tensor descriptors instead of pointers."""

    def __init__(self, kernel):
        self.kernel, self.with_descriptors, self.launches = kernel, 0, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            from triton.tools.tensor_descriptor import TensorDescriptor

            self.launches += 1
            self.with_descriptors += any(isinstance(a, TensorDescriptor) for a in args)
            return self.kernel[grid](*args, **kwargs)
        return launch
