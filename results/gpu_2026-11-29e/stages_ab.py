"""Backward alone of the fused Gluon kernel with a query ring of STAGES (argv[1]) stages, at the benchmark's paired
shape, against the Triton split in the same process (one process per ring depth: the depth is a compile-time
global of the kernel).

    PYTHONPATH=. python results/gpu_2026-11-29e/stages_ab.py 3
"""
import sys

import torch
from triton.experimental.gluon import language as gl

from kernels import gluon_backward as gb
from kernels import launch
from kernels.bench import _tda_inputs, _time

gb.STAGES = gl.constexpr(int(sys.argv[1]))
for T in (4096, 8192, 16384):
    x = _tda_inputs(16384 // T, T, 6, 64, 128, torch.bfloat16, 2, 0.5)
    det = [x[n].detach() for n in ("q1", "k1", "v", "q2", "k2")]
    beta = torch.ones(6, device="cuda")
    out, *norms = launch.forward(*det[:3], *det[3:], x["lam"].detach(), beta, 2.0, True, 1.0, True)
    args = (torch.randn_like(out), *det[:3], *det[3:], *norms, x["lam"].detach(), beta, 2.0, True, 1.0, True, True,
            False, False)
    times = {}
    for _ in range(2):
        for fused in (False, True):
            times.setdefault("fused" if fused else "split", []).append(
                _time(lambda: launch.backward(*args, fused=fused), [], 60))
    c = launch.last_compiled["fused"]
    print(f"stages={gb.STAGES.value} T={T} regs={c.n_regs} spills={c.n_spills} backward ms: "
          + " | ".join(f"{k} {' '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()), flush=True)
