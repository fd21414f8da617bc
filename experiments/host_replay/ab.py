"""One-off A/B (GPU): the paired entry on the Python path against kernels.replay's C++ engine, cuDNN beside: forward+
backward ms (CUDA events), host µs per call (the least of 3 means of 20 calls issued while the GPU sleeps), and the
outputs and gradients compared first (dQ to its rounding: its additions' order changes from run to run).

    python experiments/host_replay/ab.py [T,T,...] [d,d,...]
"""
import sys
import time

import torch
from torch.nn.attention import SDPBackend

from benchmarks import attention as bench
from benchmarks import timing
from kernels import replay
from kernels.threshold.autograd import paired_threshold_attention_triton

seqs = [int(t) for t in sys.argv[1].split(",")] if len(sys.argv) > 1 else [4096, 8192, 16384]
dims = [int(t) for t in sys.argv[2].split(",")] if len(sys.argv) > 2 else [64, 128]
print("#", torch.cuda.get_device_name(), torch.__version__, flush=True)
t0 = time.time()
replay.native()
print(f"# engine built or loaded in {time.time() - t0:.1f} s", flush=True)
print("| d | T | B | cuDNN ms | Python ms | replay ms | host µs cuDNN | host µs Python | host µs replay |")
print("|---|---|---|---|---|---|---|---|---|")
for d in dims:
    pairs = 768 // d // 2
    for T in seqs:
        B = max(1, 16384 // T)
        x = bench._tda_inputs(B, T, pairs, d, 2 * d, torch.bfloat16, 2, bench.DENSE_RHO)
        q, k = bench.paired_whole(x)
        v, lam = x["v"], x["lam"]
        leaves = [q, k, v, lam]
        sm = [timing.projection(B, T, 2 * pairs, d, torch.bfloat16) for _ in range(3)]

        def tda():
            return paired_threshold_attention_triton(q, k, v, lam=lam)

        replay.ENABLED = False
        out = tda()
        do = torch.randn_like(out)
        want = (out, *torch.autograd.grad(out, leaves, do))
        replay.ENABLED = True
        replay.clear()
        for i in range(3):
            o = tda()
            got = (o, *torch.autograd.grad(o, leaves, do))
            for name, g, w in zip(("out", "q", "k", "v", "lam"), got, want):
                ok = torch.equal(g, w) if name != "q" else bool(
                    (g.float() - w.float()).abs().max() <= 1e-2 * w.float().abs().max())
                if not ok:
                    print(f"d={d} T={T} call {i}: {name} DIFFERS", flush=True)
        print(f"# d={d} T={T} status {list(replay.status().values())}", flush=True)
        res = {}
        for name, on in (("cudnn", None), ("python", False), ("replay", True)):
            if on is not None:
                replay.ENABLED = on
            fwd = (lambda: timing.causal_sdpa(*sm, SDPBackend.CUDNN_ATTENTION)) if on is None else tda
            step = timing.fwd_bwd_step(fwd, sm if on is None else leaves)
            for _ in range(3):
                step()
            res[name] = (timing.time_ms(step, sm if on is None else leaves, 40),
                         min(timing.host_us(step, 20) for _ in range(3)))
        print(f"| {d} | {T} | {B} | {res['cudnn'][0]:.3f} | {res['python'][0]:.3f} | {res['replay'][0]:.3f} | "
              f"{res['cudnn'][1]:.0f} | {res['python'][1]:.0f} | {res['replay'][1]:.0f} |", flush=True)
replay.ENABLED = False
