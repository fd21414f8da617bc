"""Host time (µs) to issue each part of paired TDA's forward+backward at T=4096, while a sleep kernel keeps the GPU busy."""
import time
import torch
from kernels import bench, launch
from kernels.autograd import threshold_attention_triton

def host_us(fn, calls=30):
    fn(); torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.perf_counter() - t) / calls * 1e6
    torch.cuda.synchronize()
    return us

x = bench._tda_inputs(4, 4096, 6, 64, 128, torch.bfloat16, 2, 0.5)
q1, k1, v, q2, k2 = (x[n].detach() for n in ("q1", "k1", "v", "q2", "k2"))
lam, beta = x["lam"].detach(), torch.ones(6, device="cuda")
out, rq1, rk1, rq2, rk2 = launch.forward(q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True)
do = torch.randn_like(out)
leaf = [x[n] for n in ("q1", "k1", "v", "q2", "k2")] + [x["lam"]]
def fb():
    for t in leaf: t.grad = None
    threshold_attention_triton(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], lam=x["lam"]).backward(do)
parts = {
    "torch.empty (B,H,T,d)": lambda: torch.empty(4, 6, 4096, 64, device="cuda", dtype=torch.bfloat16),
    "key_inverse_norms": lambda: launch.key_inverse_norms(k1, k2),
    "launch.forward": lambda: launch.forward(q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True),
    "launch.backward": lambda: launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, 2.0, True, 1.0, True, True, False, False),
    "autograd forward": lambda: threshold_attention_triton(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], lam=x["lam"]),
    "autograd forward+backward": fb,
}
for name, fn in parts.items():
    print(f"{name:28s} {host_us(fn):8.1f} us", flush=True)
import cProfile, pstats
pr = cProfile.Profile(); pr.enable()
for _ in range(30): fb()
pr.disable(); torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
