"""Host-side profile of paired TDA forward+backward at T=4096 (B=4, H=6, d=64, dv=128, bf16), the GPU kept busy by
a sleep kernel so only the issuing cost is seen: cProfile (tottime, cumulative) and torch.profiler's CPU ops.

    PYTHONPATH=. python results/gpu_2026-11-29f/host_profile.py

(The logs were made with a copy of kernels.bench.host_us that held the GPU busy for 2 s instead of 0.5 s.)"""
import cProfile
import pstats
import sys

import torch

from kernels import bench
from kernels.autograd import threshold_attention_triton

x = bench._tda_inputs(4, 4096, 6, 64, 128, torch.bfloat16, 2, 0.5)
leaf = [x[n] for n in ("q1", "k1", "v", "q2", "k2")] + [x["lam"]]
out = threshold_attention_triton(*leaf[:5], lam=x["lam"])
do = torch.randn_like(out)


def fb():
    for t in leaf:
        t.grad = None
    threshold_attention_triton(*leaf[:5], lam=x["lam"]).backward(do)



for _ in range(3):
    fb()
print(f"fwd+bwd host: {bench.host_us(fb, 100):.1f} us (then {bench.host_us(fb, 100):.1f})", flush=True)
torch.cuda.synchronize()
torch.cuda._sleep(4_000_000_000)
prof = cProfile.Profile()
prof.enable()
for _ in range(100):
    fb()
prof.disable()
torch.cuda.synchronize()
stats = pstats.Stats(prof, stream=sys.stdout)
stats.sort_stats("tottime").print_stats(45)
stats.sort_stats("cumulative").print_stats(45)

from torch.profiler import ProfilerActivity, profile  # noqa: E402
torch.cuda._sleep(2_000_000_000)
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(50):
        fb()
torch.cuda.synchronize()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
