"""Experiment: the fused Gluon backward with its two warpgroups as warp-specialised partitions (each over its own
64 keys, synchronised by mbarriers, no CTA-wide barrier) against the fused kernel and the Triton split: first
max |x - split| / max |split| per gradient on awkward small inputs, then backward alone at the benchmark's
paired shape (T = 4096 / 8192 / 16384, B·T = 16384), alternating, and forward+backward beside cuDNN.

    PYTHONPATH=. python results/gpu_2026-11-29d/ws_ab.py

It needs the warp-specialised kernel, which lives on the branch experiment/gluon-ws (commit 8043077), not on main.
"""
import torch
import triton
from torch.nn.attention import SDPBackend

from kernels import gluon_backward as gb
from kernels import launch
from kernels.autograd import threshold_attention_triton
from kernels.bench import _projection, _tda_inputs, _time, causal_sdpa

print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
names = ["dq1", "dk1", "dv", "dq2", "dk2", "dlam", "dbeta"]


def grads(args, mode):
    gb.WARP_SPECIALIZED = mode == "ws"
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
    for mode in ("fused", "ws"):
        got = grads(args, mode)
        print(f"T={T} Tq={Tq} causal={causal} norm={norm} p={p} beta={beta_v} dv={dv} {mode}: "
              + " ".join(f"{n}={rel(a, b):.1e}" for n, a, b in zip(names, got, split)), flush=True)

for T in (4096, 8192, 16384):
    B = 16384 // T
    x = _tda_inputs(B, T, 6, 64, 128, torch.bfloat16, 2, 0.5)
    ins = [x[n] for n in ("q1", "k1", "v", "q2", "k2")]
    det = [t.detach() for t in ins]
    beta = torch.ones(6, device="cuda")
    out, *norms = launch.forward(*det[:3], *det[3:], x["lam"].detach(), beta, 2.0, True, 1.0, True)
    args = (torch.randn_like(out), *det[:3], *det[3:], *norms, x["lam"].detach(), beta, 2.0, True, 1.0, True, True,
            True, False)
    split = grads(args, "split")
    ws = grads(args, "ws")
    c = launch.last_compiled["fused"]
    print(f"T={T} ws regs={c.n_regs} spills={c.n_spills} vs split: "
          + " ".join(f"{n}={rel(a, b):.1e}" for n, a, b in zip(names, ws, split)), flush=True)
    times = {}
    for _ in range(2):
        for mode in ("split", "fused", "ws"):
            times.setdefault(mode, []).append(_time(lambda: grads(args, mode), [], 60))
    print(f"  T={T} backward ms: " + " | ".join(f"{k} {' '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()),
          flush=True)
    sm = {n: _projection(B, T, 12, 64, torch.bfloat16, 0.0) for n in "qkv"}
    do_sm = torch.randn_like(causal_sdpa(sm["q"], sm["k"], sm["v"], SDPBackend.CUDNN_ATTENTION))
    cudnn = _time(lambda: causal_sdpa(sm["q"], sm["k"], sm["v"], SDPBackend.CUDNN_ATTENTION).backward(do_sm),
                  list(sm.values()), 60)
    do_t = torch.randn_like(out)
    row = {}
    for mode in ("fused", "ws"):
        gb.WARP_SPECIALIZED = mode == "ws"
        row[mode] = _time(lambda: threshold_attention_triton(*ins, lam=x["lam"]).backward(do_t), ins + [x["lam"]], 60)
    print(f"  T={T} fwd+bwd: fused {row['fused']:.3f} ({row['fused'] / cudnn:.2f}x) ws {row['ws']:.3f} "
          f"({row['ws'] / cudnn:.2f}x) | cuDNN {cudnn:.3f}", flush=True)
gb.WARP_SPECIALIZED = False
