"""Fused Gluon backward against the Triton split backward on small inputs (one key block, every weight alive with
beta = -10, or the usual inputs): max |fused - split| / max |split| per gradient. It located the wrong results of the
first fused kernel in its unmasked tiles (branch_debug.log).

    PYTHONPATH=. python results/gpu_2026-11-29d/branch_debug.py
"""
import torch, itertools
from kernels import launch
torch.manual_seed(0)
names = ["dq1", "dk1", "dv", "dq2", "dk2", "dlam", "dbeta"]
def run(T, causal, norm, p, beta_v, B=1, H=1, dv=128):
    mk = lambda w: torch.randn(B, T, H, w, device="cuda").to(torch.bfloat16).transpose(1, 2)
    q1, k1, v, q2, k2 = mk(64), mk(64), mk(dv), mk(64), mk(64)
    lam = torch.full((H,), 0.5, device="cuda"); beta = torch.full((H,), beta_v, device="cuda")
    scale = 1.0 if norm else 0.125
    out, *norms = launch.forward(q1, k1, v, q2, k2, lam, beta, p, norm, scale, causal)
    do = torch.randn_like(out)
    g = {}
    for fused in (False, True):
        g[fused] = launch.backward(do, q1, k1, v, q2, k2, *norms, lam, beta, p, norm, scale, causal, True, True, False, fused=fused)
    errs = [((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item() for a, b in zip(g[True], g[False])]
    print(f"T={T} B={B} H={H} dv={dv} causal={causal} norm={norm} p={p} beta={beta_v}: " + " ".join(f"{n}={e:.1e}" for n, e in zip(names, errs)), flush=True)
    return g
for T, causal, norm, p, beta_v in [(32, False, False, 1.0, -10.0), (32, True, False, 1.0, -10.0), (128, False, False, 1.0, -10.0),
                                   (256, False, False, 1.0, -10.0), (256, True, False, 1.0, -10.0), (256, True, True, 2.0, 0.5),
                                   (300, True, True, 2.0, 0.5)]:
    g = run(T, causal, norm, p, beta_v)
g = run(32, False, False, 1.0, -10.0)
a, b = g[True][2][0, 0].float(), g[False][2][0, 0].float()
print("dv fused rows 0..3 cols 0..5\n", a[:4, :6], "\nsplit\n", b[:4, :6])
print("ratio rows", (a.norm(dim=1) / b.norm(dim=1))[:16])
a, b = g[True][1][0, 0].float(), g[False][1][0, 0].float()
print("dk1 ratio rows", (a.norm(dim=1) / b.norm(dim=1))[:16], (a.norm(dim=1) / b.norm(dim=1))[60:70])
run(256, True, True, 2.0, 0.5, B=2, H=3)
