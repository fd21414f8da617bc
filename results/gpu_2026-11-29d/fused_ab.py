"""Fused Gluon paired backward (variants "block_m,overlap,split_mask": query tiles of 32 or 64 rows, products
synchronous or overlapped, interior tiles without the mask in a loop of their own or not)
against the Triton split backward (dK/dV kernel + dQ kernel), same inputs, alternating, with cuDNN SDPA in the
same run: backward alone, and forward+backward of the best variant, T = 4096, 8192, 16384, B·T = 16384,
6 heads of q/k 64 and v 128 (kernels.bench's paired shape and inputs), bf16.

    PYTHONPATH=. python results/gpu_2026-11-29d/fused_ab.py [--seq 4096 8192 16384] [--rep-ms 60]

It drives the variants through keyword arguments of launch._gluon_backward that existed up to commit c991fb2; the
losing variants were removed after it, so run it against that commit.
"""
import argparse

import torch
import triton
from torch.nn.attention import SDPBackend

from kernels import launch
from kernels.autograd import threshold_attention_triton
from kernels.bench import _host_us, _projection, _tda_inputs, _time, causal_sdpa, survivor_share

parser = argparse.ArgumentParser()
parser.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384])
parser.add_argument("--rep-ms", type=int, default=60)
parser.add_argument("--variants", nargs="+", default=["32,0,0", "32,1,0", "64,0,0", "64,1,0"],
                    help="block_m,overlap,split_mask")
args = parser.parse_args()
print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
real = launch._gluon_backward
variants = [(int(v.split(",")[0]), v.split(",")[1] == "1", v.split(",")[2] == "1") for v in args.variants]


def use(variant):
    bm, ov, sm = variant
    launch._gluon_backward = lambda *a: real(*a, block_m=bm, overlap=ov, split_mask=sm)


for T in args.seq:
    B = 16384 // T
    x = _tda_inputs(B, T, 6, 64, 128, torch.bfloat16, 2, 0.5)
    ins = [x[n] for n in ("q1", "k1", "v", "q2", "k2")]
    beta = torch.ones(6, device="cuda")
    det = [t.detach() for t in ins]
    out, *norms = launch.forward(*det[:3], *det[3:], x["lam"].detach(), beta, 2.0, True, 1.0, True)
    do = torch.randn_like(out)

    def bwd(fused):
        return launch.backward(do, *det[:3], *det[3:], *norms, x["lam"].detach(), beta, 2.0, True, 1.0, True,
                               True, True, False, fused=fused)

    split = bwd(False)
    print(f"T={T} B={B} survivors {100 * survivor_share(x):.2f}%", flush=True)
    times = {}
    for variant in variants:
        use(variant)
        got = bwd(True)
        c = launch.last_compiled["fused"]
        diffs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(got, split)]
        print(f"  fused {variant}: regs={c.n_regs} spills={c.n_spills} max|fused-split|/max|split|: "
              + " ".join(f"{d:.1e}" for d in diffs), flush=True)
    for rep in range(2):
        times.setdefault("split", []).append(_time(lambda: bwd(False), [], args.rep_ms))
        for variant in variants:
            use(variant)
            times.setdefault(variant, []).append(_time(lambda: bwd(True), [], args.rep_ms))
    print("  backward ms (two alternating runs): " + " | ".join(
        f"{k}: {' '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()), flush=True)
    best = min(variants, key=lambda v: min(times[v]))
    use(best)
    print(f"  backward host us: split {_host_us(lambda: bwd(False)):.0f} fused {best} {_host_us(lambda: bwd(True)):.0f}",
          flush=True)
    sm = {n: _projection(B, T, 12, 64, torch.bfloat16, 0.0) for n in "qkv"}
    o_sm = causal_sdpa(sm["q"], sm["k"], sm["v"], SDPBackend.CUDNN_ATTENTION)
    do_sm = torch.randn_like(o_sm)
    cudnn = _time(lambda: causal_sdpa(sm["q"], sm["k"], sm["v"], SDPBackend.CUDNN_ATTENTION).backward(do_sm),
                  list(sm.values()), args.rep_ms)
    do_t = torch.randn_like(out)
    default = launch.fused_paired_backward
    for rep in range(2):
        row = {}
        for mode in (False, True):
            launch.fused_paired_backward = lambda head_d, head_dv, mode=mode: mode
            row[mode] = _time(lambda: threshold_attention_triton(*ins, lam=x["lam"]).backward(do_t), ins + [x["lam"]],
                              args.rep_ms)
            if rep == 0:
                host = _host_us(lambda: threshold_attention_triton(*ins, lam=x["lam"]).backward(do_t))
                print(f"  fwd+bwd host us ({'fused' if mode else 'split'}): {host:.0f}", flush=True)
        launch.fused_paired_backward = default
        print(f"  T={T} fwd+bwd: split {row[False]:.3f} ({row[False] / cudnn:.2f}x) fused {best} {row[True]:.3f} "
              f"({row[True] / cudnn:.2f}x) | cuDNN fwd+bwd {cudnn:.3f}", flush=True)
launch._gluon_backward = real
