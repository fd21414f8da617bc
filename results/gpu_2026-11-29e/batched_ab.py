"""Experiment of the branch experiment/gluon-batched-mma: the fused Gluon backward with its back-to-back products
issued together and waited for once (dA with the first scores, dK1 with the second scores, dK2 with dV;
gluon_backward.BATCHED_MMA) against the default and the Triton split in the same run: exactness on awkward
shapes (max |x - split| / max |split|), then backward alone at the benchmark's paired shape, alternating.
With argv[1] == "bench" it runs the benchmark (argv[2:]) with the variant on; with "test", pytest (argv[2:]).

    PYTHONPATH=. python results/gpu_2026-11-29e/batched_ab.py   (ran on commit b948bd7 of experiment/gluon-batched-mma,
    where gluon_backward.BATCHED_MMA chose the variant; it became the only form after)
"""
import sys

import torch

from kernels import gluon_backward as gb
from kernels import launch
from kernels.bench import _tda_inputs, _time

if len(sys.argv) > 1 and sys.argv[1] in ("bench", "test"):
    gb.BATCHED_MMA = True
    if sys.argv[1] == "bench":
        from kernels import bench
        bench.main(sys.argv[2:])
    else:
        import pytest
        sys.exit(pytest.main(sys.argv[2:]))
    sys.exit(0)

names = ["dq1", "dk1", "dv", "dq2", "dk2", "dlam", "dbeta"]
modes = ("split", "fused", "batched")


def grads(args, mode):
    gb.BATCHED_MMA = mode == "batched"
    return launch.backward(*args, fused=mode != "split")


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


torch.manual_seed(0)
for T, Tq, causal, norm, p, beta_v, dv in [(1, 1, True, True, 2.0, 1.0, 128), (63, 63, True, True, 1.0, 0.5, 128),
                                          (200, 200, False, False, 3.0, -1.0, 64), (300, 100, True, True, 2.0, 0.5, 128),
                                          (1111, 1111, True, True, 2.0, 0.0, 32)]:
    mk = lambda n, w: torch.randn(2, n, 3, w, device="cuda").to(torch.bfloat16).transpose(1, 2)  # noqa: E731
    q1, k1, v, q2, k2 = mk(Tq, 64), mk(T, 64), mk(T, dv), mk(Tq, 64), mk(T, 64)
    lam, beta = torch.tensor([0.5, 1.3, -0.2], device="cuda"), torch.full((3,), beta_v, device="cuda")
    scale = 1.0 if norm else 0.125
    out, *norms = launch.forward(q1, k1, v, q2, k2, lam, beta, p, norm, scale, causal)
    args = (torch.randn_like(out), q1, k1, v, q2, k2, *norms, lam, beta, p, norm, scale, causal, True, True, False)
    split = grads(args, "split")
    for mode in modes[1:]:
        got = grads(args, mode)
        print(f"T={T} Tq={Tq} causal={causal} norm={norm} p={p} beta={beta_v} dv={dv} {mode}: "
              + " ".join(f"{n}={rel(a, b):.1e}" for n, a, b in zip(names, got, split)), flush=True)

for T in (4096, 8192, 16384):
    x = _tda_inputs(16384 // T, T, 6, 64, 128, torch.bfloat16, 2, 0.5)
    det = [x[n].detach() for n in ("q1", "k1", "v", "q2", "k2")]
    beta = torch.ones(6, device="cuda")
    out, *norms = launch.forward(*det[:3], *det[3:], x["lam"].detach(), beta, 2.0, True, 1.0, True)
    args = (torch.randn_like(out), *det[:3], *det[3:], *norms, x["lam"].detach(), beta, 2.0, True, 1.0, True, True,
            False, False)
    for mode in modes[1:]:
        grads(args, mode)
        c = launch.last_compiled["fused"]
        print(f"T={T} {mode}: regs={c.n_regs} spills={c.n_spills}", flush=True)
    times = {}
    for _ in range(2):
        for mode in modes:
            times.setdefault(mode, []).append(_time(lambda: grads(args, mode), [], 60))
    print(f"T={T} backward ms: " + " | ".join(f"{k} {' '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()),
          flush=True)
gb.BATCHED_MMA = False
