"""The paired forward as a Gluon kernel (kernels/gluon_forward.py) against the Triton forward in the same process:
exactness on awkward shapes (max |x - triton| / max |triton| for the output and the queries' inverse norms), then the
forward alone at the benchmark's paired shape (B·T = 16384, or B = 2 at T = 6144), alternating. (The logs were made
when the Gluon forward was taken only from 8192 keys on, which they led to drop; the A/B switches
launch.gluon_forward_fits.)

    PYTHONPATH=. python results/gpu_2026-11-29f/gluon_forward_ab.py
"""
import torch

from kernels import launch
from kernels.bench import _tda_inputs, _time

fits = launch.gluon_forward_fits


def forward(args, gluon):
    launch.gluon_forward_fits = fits if gluon else (lambda *a: False)
    return launch.forward(*args)


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


torch.manual_seed(0)
for T, Tq, causal, norm, p, beta_v, dv, dtype in [
        (1, 1, True, True, 2.0, 1.0, 128, torch.bfloat16), (63, 63, True, True, 1.0, 0.5, 128, torch.bfloat16),
        (200, 200, False, False, 3.0, -1.0, 64, torch.bfloat16), (300, 100, True, True, 2.0, 0.5, 128, torch.bfloat16),
        (1111, 1111, True, True, 2.0, 0.0, 32, torch.float16), (4096, 4096, True, True, 2.0, 1.0, 128, torch.bfloat16)]:
    mk = lambda n, w: torch.randn(2, n, 3, w, device="cuda").to(dtype).transpose(1, 2)  # noqa: E731
    q1, k1, v, q2, k2 = mk(Tq, 64), mk(T, 64), mk(T, dv), mk(Tq, 64), mk(T, 64)
    lam, beta = torch.tensor([0.5, 1.3, -0.2], device="cuda"), torch.full((3,), beta_v, device="cuda")
    args = (q1, k1, v, q2, k2, lam, beta, p, norm, 1.0 if norm else 0.125, causal)
    ref = forward(args, False)
    got = forward(args, True)
    assert "fused_fwd" in launch.last_compiled
    print(f"T={T} Tq={Tq} causal={causal} norm={norm} p={p} beta={beta_v} dv={dv} {dtype}: out={rel(got[0], ref[0]):.1e}"
          + (f" rq1={rel(got[1], ref[1]):.1e} rq2={rel(got[3], ref[3]):.1e}" if norm else ""), flush=True)

for T in (2048, 4096, 6144, 8192, 16384):
    x = _tda_inputs(max(1, 16384 // T), T, 6, 64, 128, torch.bfloat16, 2, 0.5)
    args = (*(x[n].detach() for n in ("q1", "k1", "v", "q2", "k2")), x["lam"].detach(), torch.ones(6, device="cuda"),
            2.0, True, 1.0, True)
    forward(args, True)
    c = launch.last_compiled["fused_fwd"]
    times = {}
    for _ in range(2):
        for gluon in (False, True):
            times.setdefault("gluon" if gluon else "triton", []).append(_time(lambda: forward(args, gluon), [], 60))
    print(f"T={T} gluon: registers {c.n_regs}, spills {c.n_spills}; forward ms: "
          + " | ".join(f"{k} {' '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()), flush=True)
launch.gluon_forward_fits = fits
