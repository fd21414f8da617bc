"""Forward (with / without lists of surviving keys) and backward of each dQ path at the benchmark's shapes
(ms, median), with the share of query blocks whose lists fit, and GPU time per kernel at T=4096.
Run: PYTHONPATH=$PWD python3 .gpu_jobs/rows_ab.py"""
import torch
from kernels import bench, launch
from kernels.profile import format_kernel_table, profile_calls

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
            fixed = (lam, beta, 2.0, True, 1.0, True)
            f0 = bench._time(lambda: launch.forward(q1, k1, v, q2, k2, *fixed, False), [], 40)
            f1 = bench._time(lambda: launch.forward(q1, k1, v, q2, k2, *fixed, True), [], 40)
            out, *saved = launch.forward(q1, k1, v, q2, k2, *fixed, True)
            counts = saved[4]
            do = torch.randn_like(out)
            print(f"T={T} views={views} rho={rho} share={100 * share:.2f}% fwd {f0:.3f} ms, with lists {f1:.3f} ms;"
                  f" survivors per row mean {counts[..., 0].float().mean():.1f} max {counts[..., 0].max().item()},"
                  f" entries max {counts[..., 1].max().item()}, rows over {launch.list_slots()} entries"
                  f" {(counts[..., 1] > launch.list_slots()).float().mean().item():.4f}", flush=True)

            def bwd(path):
                return launch.backward(do, q1, k1, v, q2, k2, *saved, *fixed, views == 2, False, False, dq_path=path)
            ref = bwd("dense")
            for path in ("dense", "atomic", "survivors"):
                got = bwd(path)
                err = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                          for a, b in zip(got[:5], ref[:5]) if a is not None)
                ms = bench._time(lambda: bwd(path), [], 40)
                print(f"   bwd {path:9s} {ms:.3f} ms (vs dense rel {err:.1e})", flush=True)
            if T == 4096 and rho == 0.5:
                for path in ("dense", "survivors") if views == 2 else ("atomic", "survivors"):
                    print(format_kernel_table(f"backward views={views} T={T} dq_path={path}",
                                              profile_calls(lambda: bwd(path), 10)), flush=True)
