"""Compile time, registers, spill stores and shared memory of the fp32 forward, dK/dV and dQ kernels for a wide
head (sm_90, on CPU, with the Triton the GPU machine runs), at given tiles. It produced the numbers behind
tile_configs.FP32_WIDE (BENCHMARKS.md, "Wide fp32 heads"):

    PYTHONPATH=. python results/gpu_2026-11-29c/fp32_wide_compile.py --tiles 64,32,4,2 32,64,4,1 64,32,4,2
    PYTHONPATH=. python results/gpu_2026-11-29c/fp32_wide_compile.py --tiles 16,16,4,1 16,16,4,1 16,16,4,1

--tiles gives the forward's, the dK/dV kernel's and the dQ kernel's tile (block_m, block_n, warps, stages); the
first line is what the fp32 tables chose before (they still do for narrower heads). Default head: TDA, d = dv = 256.
"""
import argparse
import time

import torch

from kernels import launch, registers
from kernels.tile_configs import TileConfig

parser = argparse.ArgumentParser()
parser.add_argument("--d", type=int, default=256)
parser.add_argument("--dv", type=int, default=256)
parser.add_argument("--views", type=int, default=2, choices=[1, 2])
parser.add_argument("--tiles", nargs=3, required=True, metavar="M,N,WARPS,STAGES")
args = parser.parse_args()
fwd_cfg, dkdv_cfg, dq_cfg = (TileConfig(*map(int, t.split(","))) for t in args.tiles)
x = registers._inputs(args.views, args.d, args.dv, 2, torch.float32, 300)
fixed = (x["lam"], x["beta"], 2.0, True, 1.0, True)
with registers.compile_only(90):
    start = time.time()
    out, *norms = launch.forward(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], *fixed, config=fwd_cfg)
    print(f"forward {fwd_cfg.describe()}: compiled in {time.time() - start:.1f} s,",
          registers.ptxas_usage(launch.last_compiled["fwd"], 90), flush=True)
    grads = (torch.zeros_like(out), x["q1"], x["k1"], x["v"], x["q2"], x["k2"], *norms, *fixed, args.views == 2,
             False, False)
    start = time.time()
    launch.backward(*grads, config=dkdv_cfg, dq_config=dq_cfg, atomic_dq=False)
    print(f"backward (dK/dV {dkdv_cfg.describe()}, dQ {dq_cfg.describe()}): compiled in {time.time() - start:.1f} s")
    for kernel in ("dkdv", "dq"):
        print(f"  {kernel}:", registers.ptxas_usage(launch.last_compiled[kernel], 90), flush=True)
