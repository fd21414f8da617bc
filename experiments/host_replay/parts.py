"""One-off (GPU): where the replayed call's host time goes. Host µs per call (least of 3 means of 20 calls issued
while the GPU sleeps), paired 6 × 64 (v 128), B = 4, T = 4096, dense."""
import torch
from torch.nn.attention import SDPBackend

from benchmarks import attention as bench
from benchmarks import timing
from kernels import replay
from kernels.threshold.autograd import paired_threshold_attention_triton
from kernels.threshold.tiles import skip_empty_tiles
from kernels.threshold.options import ThresholdOptions

B, T, d, pairs = 4, 4096, 64, 6
x = bench._tda_inputs(B, T, pairs, d, 2 * d, torch.bfloat16, 2, bench.DENSE_RHO)
q, k = bench.paired_whole(x)
v, lam = x["v"], x["lam"]
leaves = [q, k, v, lam]
sm = [timing.projection(B, T, 2 * pairs, d, torch.bfloat16) for _ in range(3)]
tda = lambda: paired_threshold_attention_triton(q, k, v, lam=lam)
cud = lambda: timing.causal_sdpa(*sm, SDPBackend.CUDNN_ATTENTION)
replay.ENABLED = True
for _ in range(3):
    o = tda()
    o.backward(torch.randn_like(o))
state = [s for s in replay._state.values() if isinstance(s, tuple)][0]
fwd, bwd, layout = state
eng = replay.native()
beta = torch.ones(pairs, device="cuda")
outs = eng.run(fwd, [q, k, v, lam, beta])
do = torch.randn(layout[0], device="cuda", dtype=torch.bfloat16).as_strided(layout[0], layout[1])
def h(fn):
    return min(timing.host_us(fn, 20) for _ in range(3))
rows = []
def fb(f, ls):
    return timing.fwd_bwd_step(f, ls)
rows.append(("cuDNN fwd+bwd", h(fb(cud, sm))))
rows.append(("replay fwd+bwd", h(fb(tda, leaves))))
rows.append(("replay forward alone (graph dropped)", h(tda)))
with torch.no_grad():
    rows.append(("cuDNN forward alone, no_grad", h(cud)))
rows.append(("the forward program alone (native.run)", h(lambda: eng.run(fwd, [q, k, v, lam, beta]))))
rows.append(("the backward program alone (native.run)", h(lambda: eng.run(bwd, [do, q, k, v, lam, beta, *outs[1:]]))))
opts = ThresholdOptions()
def key():
    return (replay._meta(q), replay._meta(k), replay._meta(v), replay._meta(lam), replay._meta(1.0), opts,
            skip_empty_tiles(), torch.is_grad_enabled(), torch.are_deterministic_algorithms_enabled())
rows.append(("the Python key", h(key)))
torch.autograd.set_multithreading_enabled(False)
rows.append(("cuDNN fwd+bwd, calling thread", h(fb(cud, sm))))
rows.append(("replay fwd+bwd, calling thread", h(fb(tda, leaves))))
torch.autograd.set_multithreading_enabled(True)
replay.ENABLED = False
rows.append(("Python path fwd+bwd", h(fb(tda, leaves))))
print("| what | host µs |\n|---|---|")
for n, t in rows:
    print(f"| {n} | {t:.0f} |", flush=True)

names = {v: k for k, v in __import__("kernels.replay.record", fromlist=["OPCODES"]).OPCODES.items()}
for pid, name, ins in ((fwd, "forward", [q, k, v, lam, beta]), (bwd, "backward", [do, q, k, v, lam, beta, *outs[1:]])):
    us = eng.instruction_us(pid, ins, 200)
    code = replay._programs[pid]
    print(f"\n{name} program: {len(us)} instructions, {sum(us):.0f} µs")
    by = {}
    for c, t in zip(code, us):
        by.setdefault(names[c[0]], []).append(t)
        print(f"  {names[c[0]]:6s} {t:7.1f} µs  {c[:8]}")
    print("  by kind:", {n: (len(ts), round(sum(ts), 1)) for n, ts in by.items()}, flush=True)
