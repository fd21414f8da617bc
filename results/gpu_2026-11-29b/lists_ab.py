"""Backward of each dQ path at the benchmark's shapes (ms, median), with the share of lists that fit, and
GPU time per kernel at T=4096. Run: PYTHONPATH=$PWD python3 .gpu_jobs/lists_ab.py [label]"""
import sys
import torch
from kernels import bench, launch
from kernels.profile import format_kernel_table, profile_calls

label = sys.argv[1] if len(sys.argv) > 1 else ""
made = []
original = launch.key_lists


def recording(*args):
    made.append(original(*args))
    return made[-1]


launch.key_lists = recording
torch.manual_seed(0)
for T in (4096, 8192, 16384):
    B = 16384 // T
    for views in (2, 1):
        heads, dv = (6, 128) if views == 2 else (12, 64)
        for rho in (0.5, 0.8):
            x = bench._tda_inputs(B, T, heads, 64, dv, torch.bfloat16, views, rho)
            share = bench.survivor_share(x)
            q1, k1, v = (x[n].detach() for n in ("q1", "k1", "v"))
            q2, k2 = (x["q2"].detach(), x["k2"].detach()) if views == 2 else (None, None)
            lam = x["lam"].detach() if views == 2 else None
            beta = torch.ones(heads, device="cuda")
            out, rq1, rk1, rq2, rk2 = launch.forward(q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True)
            do = torch.randn_like(out)
            res = {}
            for path in ("dense", "atomic", "survivors"):
                def bwd(path=path):
                    return launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, 2.0, True, 1.0,
                                           True, views == 2, False, False, dq_path=path)
                made.clear()
                ref = bwd("dense")
                got = bwd()
                err = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                          for a, b in zip(got[:5], ref[:5]) if a is not None)
                fits = ""
                if path == "survivors":
                    counts, _, slots, _ = made[-1]
                    fits = f" lists fit {(counts <= slots).float().mean().item():.3f} mean {counts.float().mean().item():.0f} max {counts.max().item()}"
                ms = bench._time(bwd, [], 40)
                res[path] = ms
                print(f"{label} T={T} views={views} rho={rho} share={100 * share:.2f}% {path:9s} bwd {ms:.3f} ms"
                      f" (vs dense rel {err:.1e}){fits}", flush=True)
            if T == 4096 and rho == 0.5:
                for path in ("dense", "survivors") if views == 2 else ("atomic", "survivors"):
                    fn = (lambda path=path: launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, 2.0,
                                                            True, 1.0, True, views == 2, False, False, dq_path=path))
                    print(format_kernel_table(f"{label} backward views={views} T={T} dq_path={path}",
                                              profile_calls(fn, 10)), flush=True)
