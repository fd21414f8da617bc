"""The experiment behind results/gpu_2026-11-28/query_major_sweep.log (kept as run; it patches the launch
tables to force tiles): the dK/dV kernel's query-major tile layout against the key-major one, then the
best of each in whole fwd+bwd beside cuDNN SDPA at T = 4096, 8192, 16384 (paired TDA d = 64)."""
import sys, time
import torch, triton
from kernels import bench, launch
from kernels.tile_configs import TileConfig
from kernels.autograd import threshold_attention_triton

t_start = time.time()
dtype = torch.bfloat16
def bwd_time(T, views, cfg, atomic, rep=40):
    B, d = 16384 // T, 64
    heads, dv = (6, 128) if views == 2 else (12, 64)
    x = bench._tda_inputs(B, T, heads, d, dv, dtype, views, 0.3)
    q1, k1, v = (x[n].detach() for n in ("q1", "k1", "v"))
    q2, k2 = (x["q2"].detach(), x["k2"].detach()) if views == 2 else (None, None)
    lam = x["lam"].detach() if views == 2 else None
    beta = torch.ones(heads, device="cuda")
    out, rq1, rk1, rq2, rk2 = launch.forward(q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True)
    do = torch.randn_like(out)
    fn = lambda: launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, 2.0, True, 1.0, True,
                                 views == 2, False, False, config=cfg, atomic_dq=atomic)
    try:
        ms = bench._time(fn, [], rep)
    except Exception as err:
        print(f"  views={views} {cfg} atomic={atomic}: failed {type(err).__name__}: {str(err)[:100]}", flush=True)
        return float("inf")
    c = launch.last_compiled.get("dkdv")
    print(f"  views={views} T={T} bm={cfg.block_m} bn={cfg.block_n} w={cfg.num_warps} s={cfg.num_stages} "
          f"{'Q-major' if cfg.query_major else 'K-major'} atomic={atomic}: bwd {ms:.3f} ms "
          f"regs={getattr(c, 'n_regs', '?')} spills={getattr(c, 'n_spills', '?')}", flush=True)
    return ms

kmajor = [(32, 128, 8, 3), (32, 64, 8, 2), (64, 64, 4, 2)]
qmajor = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 8, 2),
          (128, 128, 8, 2), (64, 128, 4, 2), (128, 32, 8, 2), (32, 128, 8, 3), (64, 32, 4, 3)]
best = {}
for views in (2, 1):
    print(f"== views={views}, T=4096", flush=True)
    for layout, cfgs in ((False, kmajor), (True, qmajor)):
        for c in cfgs:
            for atomic in (True, False):
                if time.time() - t_start > 230: break
                cfg = TileConfig(*c, query_major=layout)
                ms = bwd_time(4096, views, cfg, atomic)
                key = (views, layout)
                if ms < best.get(key, (float("inf"),))[0]:
                    best[key] = (ms, cfg, atomic)
print("best:", {k: (round(v[0], 3), v[1], v[2]) for k, v in best.items()}, flush=True)

# whole fwd+bwd with the best query-major and key-major dK/dV configs, beside cuDNN
for T in (4096, 8192, 16384):
    if time.time() - t_start > 330: break
    B = 16384 // T
    sd = bench._sdpa_rows(B, T, 12, 64, dtype, 60)
    for r in sd:
        print(f"T={T} {r['method']}: fwd {r['fwd']:.3f} fwd+bwd {r['fwd_bwd']:.3f} ms", flush=True)
    for views in (2, 1):
        for layout in (False, True):
            if (views, layout) not in best: continue
            ms, cfg, atomic = best[(views, layout)]
            launch._chosen.clear()
            launch.backward_configs = lambda *a, cfg=cfg: [cfg]
            launch.dq_atomic = lambda two_views, atomic=atomic: atomic
            rows = bench._tda_rows(B, T, 6, 64, dtype, 0.5, False, 60) if views == 2 else \
                [bench._tra_row(B, T, 12, 64, dtype, 0.5, 60)]
            r = rows[0]
            print(f"T={T} {r['method']} dkdv={cfg} atomic={atomic}: fwd {r['fwd']:.3f} fwd+bwd {r['fwd_bwd']:.3f} ms "
                  f"ratio {r['fwd_bwd'] / min(x['fwd_bwd'] for x in sd):.3f} host {r['host_us']:.0f} us", flush=True)
