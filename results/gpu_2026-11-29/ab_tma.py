"""A/B, alternating: paired TDA backward (dQ kernel apart) with the dK/dV tile 32x128/8/3 by pointers vs TMA."""
import torch
from kernels import bench, launch
from kernels.tile_configs import TileConfig
for T in (4096, 16384):
    B = 16384 // T
    x = bench._tda_inputs(B, T, 6, 64, 128, torch.bfloat16, 2, 0.3)
    q1, k1, v, q2, k2 = (x[n].detach() for n in ("q1", "k1", "v", "q2", "k2"))
    lam, beta = x["lam"].detach(), torch.ones(6, device="cuda")
    out, rq1, rk1, rq2, rk2 = launch.forward(q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True)
    do = torch.randn_like(out)
    res = {False: [], True: []}
    for rnd in range(4):
        for tma in (False, True):
            cfg = TileConfig(32, 128, 8, 3, tma=tma)
            res[tma].append(bench._time(lambda: launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta,
                                        2.0, True, 1.0, True, True, False, False, config=cfg, atomic_dq=False), [], 60))
    print(f"T={T} pointers {[round(t, 3) for t in res[False]]}  TMA {[round(t, 3) for t in res[True]]}", flush=True)
