"""Host time (µs of CPU to issue one call, the GPU kept busy by a sleep kernel) and wall time (do_bench median, ms) of
paired TDA forward+backward at the benchmark's shapes, with every launch through Triton's own binding ("binding") and
through kernels.fast_launch ("fast"), alternating; then the forward alone.

    PYTHONPATH=. python results/gpu_2026-11-29f/host_ab.py

(The logs were made with a copy of kernels.bench.host_us that held the GPU busy for 2 s instead of 0.5 s.)"""

import torch

from kernels import bench, fast_launch
from kernels.autograd import threshold_attention_triton

fast = fast_launch.launch


def binding(kernel, grid, args, kwargs):
    return kernel[grid](*args, **kwargs)



for T in (1024, 4096, 8192):
    x = bench._tda_inputs(16384 // T, T, 6, 64, 128, torch.bfloat16, 2, 0.5)
    leaf = [x[n] for n in ("q1", "k1", "v", "q2", "k2")] + [x["lam"]]
    do = torch.randn_like(threshold_attention_triton(*leaf[:5], lam=x["lam"]))

    def fb():
        for t in leaf:
            t.grad = None
        threshold_attention_triton(*leaf[:5], lam=x["lam"]).backward(do)

    def fwd():
        threshold_attention_triton(*leaf[:5], lam=x["lam"])

    rows = {}
    for _ in range(3):
        for name, launcher in (("binding", binding), ("fast", fast)):
            fast_launch.launch = launcher
            fb()
            r = rows.setdefault(name, {"fb host": [], "fb ms": [], "fwd host": [], "fwd ms": []})
            r["fb host"].append(bench.host_us(fb, 100))
            r["fb ms"].append(bench._time(fb, leaf, 60))
            with torch.no_grad():
                r["fwd host"].append(bench.host_us(fwd, 100))
                r["fwd ms"].append(bench._time(fwd, [], 60))
    fast_launch.launch = fast
    for name, r in rows.items():
        print(f"T={T} {name:8s} " + " | ".join(f"{k} " + " ".join(f"{v:.1f}" if "host" in k else f"{v:.3f}" for v in vs)
                                             for k, vs in r.items()), flush=True)
