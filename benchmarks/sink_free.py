"""GPU benchmark of the sink-free baselines' attention beside cuDNN's softmax and our TRA kernel, on the same shapes.

    python -m benchmarks.sink_free                          # T = 4096, 8192, 16384; d = 64; B·T = 16384; bf16
    python -m benchmarks.sink_free --sweep                  # also time tile candidates and σ's evaluations at 8192
    python -m benchmarks.sink_free --seq 8192 --rounds 5    # each row the median of 5 rounds, the methods in turn

For each T (batch B = tokens / T, n_head = 768 / d heads of dimension d), forward and forward+backward of
  sdpa-cudnn          causal softmax, torch SDPA forced to the cuDNN backend (the baseline: "×cuDNN")
  tra                 our one-view threshold kernel (kernels.threshold; "×TRA"), q/k sharing a direction so that a
                      real share of weights survives (as benchmarks.attention draws them)
  sigmoid             kernels/sigmoid (the bias −ln T per head, learnable)
  softpick            kernels/softpick
  sink_softmax        kernels/sink_softmax (the row-normalised kernels in their sink mode; sink logits learnable)
  sink (sdpa+key)     the sink as an extra key of SDPA (kernels.sink_softmax_attention_reference), default backends
  ssmax (sdpa)        SDPA on queries scaled per row by s_h·ln(i+1), default backends, as the model runs it
  <op>, Gluon fwd     sigmoid, softpick and sink_softmax with the forward their default does not take
  <op>, Triton fwd    (kernels.score_ops.gluon.GLUON_FORWARD): the one-view ops' Gluon forward
                      (kernels/score_ops/gluon_forward.py) or the op's Triton forward, where the Gluon one fits
Inputs are laid out as the model makes them (a (B, T, heads, d) projection viewed as (B, heads, T, d)). Times are
medians of CUDA-event timings (triton.testing.do_bench); with ``--rounds`` N the methods are timed in turn N times
and each row holds its median, so a drift of the GPU's clock reaches every row alike. TFLOP/s counts softmax's
products for every row (forward 4·B·H·T²·d/2, backward 2.5× forward). "host µs" is the CPU time to issue one
forward+backward while the GPU is kept busy. Before the table, which SDPA backends accept the sink-key call (head
dimension d + 8) and the ssmax call.

This module stands apart from benchmarks.attention (the threshold kernels' benchmark), sharing only the kernels'
public entry points, so that either can change without the other.
"""
from __future__ import annotations

import argparse
import math
import statistics
from typing import Callable, Optional
from unittest.mock import patch

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from benchmarks import timing
from benchmarks.timing import projection
from kernels.score_ops import gluon as score_gluon
from kernels.score_ops.launch import TileConfig
from kernels.sigmoid import launch as sigmoid_launch
from kernels.sigmoid.autograd import sigmoid_attention_triton
from kernels.sink_softmax.autograd import sink_softmax_attention_triton
from kernels.sink_softmax.reference import sink_softmax_attention_reference
from kernels.softpick import launch as normalized_launch
from kernels.softpick.autograd import softpick_attention_triton
from kernels.threshold.autograd import threshold_attention_triton

D_MODEL = 768


def _ssmax_queries(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q_i · s_h ln(i + 1) in fp32, back in q's dtype
    (model.attention.sink_free.ScalableSoftmaxAttention.scaled_queries)."""
    T = q.shape[2]
    factor = scale[:, None] * torch.log1p(torch.arange(T, device=q.device, dtype=torch.float32))
    return (q.float() * factor[:, :, None]).to(q.dtype)


def methods(B: int, T: int, H: int, d: int, dtype: torch.dtype,
            device: str = "cuda") -> dict[str, tuple[Callable, list]]:
    """name -> (forward, leaves that get gradients) for every row of the table, on fresh inputs."""
    q, k, v = (projection(B, T, H, d, dtype, device=device) for _ in range(3))
    bias = torch.full((H,), -math.log(T), device=device, requires_grad=True)
    sink = torch.zeros(H, device=device, requires_grad=True)
    ss = torch.full((H,), 1.0 / math.log(T), device=device, requires_grad=True)
    u = torch.nn.functional.normalize(torch.randn(1, 1, H, d, device=device), dim=-1)
    tq, tk = (projection(B, T, H, d, dtype, u, 0.5, device=device) for _ in range(2))
    qkv = [q, k, v]

    def cudnn():
        return timing.causal_sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION)

    rows = {
        "sdpa-cudnn": (cudnn, qkv),
        "tra": (lambda: threshold_attention_triton(tq, tk, v), [tq, tk, v]),
        "sigmoid": (lambda: sigmoid_attention_triton(q, k, v, bias), qkv + [bias]),
        "softpick": (lambda: softpick_attention_triton(q, k, v), qkv),
        "sink_softmax": (lambda: sink_softmax_attention_triton(q, k, v, sink), qkv + [sink]),
        "sink (sdpa+key)": (lambda: sink_softmax_attention_reference(q, k, v, sink), qkv + [sink]),
        "ssmax (sdpa)": (lambda: scaled_dot_product_attention(_ssmax_queries(q, ss), k, v, is_causal=True),
                         qkv + [ss]),
    }
    if score_gluon.gluon_forward_fits(q, k, v):   # each op again with the forward its default does not take
        for name, mode in (("sigmoid", "sigmoid"), ("softpick", "softpick"), ("sink_softmax", "sink")):
            forward, leaves = rows[name]
            other = not score_gluon.GLUON_FORWARD[mode]
            rows[f"{name}, {'Gluon' if other else 'Triton'} fwd"] = (_with_forward(forward, mode, other), leaves)
    return rows


def _with_forward(forward: Callable[[], torch.Tensor], mode: str, gluon: bool) -> Callable[[], torch.Tensor]:
    """``forward`` with ``mode``'s default forward set to the Gluon one (``gluon``) or the Triton one while it runs
    (score_gluon.GLUON_FORWARD)."""
    def run() -> torch.Tensor:
        with patch.dict(score_gluon.GLUON_FORWARD, {mode: gluon}):
            return forward()
    return run


def sdpa_backends(T: int, d: int, dtype: torch.dtype) -> list[str]:
    """Which SDPA backends accept the sink-key call (q, k, v widened to the next multiple of 8 above d, one more key;
    a throw-away query row for the square map) and the ssmax call (plain causal at d), forward and backward."""
    B, H = 1, 2
    width = d + (-(d + 1) % 8 + 1)
    lines = []
    for label, shape_q, shape_k in (("sink (sdpa+key)", (B, H, T + 1, width), (B, H, T + 1, width)),
                                    ("ssmax (sdpa)", (B, H, T, d), (B, H, T, d))):
        verdicts = []
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            q = torch.randn(*shape_q, device="cuda", dtype=dtype, requires_grad=True)
            k, v = (torch.randn(*shape_k, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
            try:
                with sdpa_kernel(backend):
                    scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
                verdicts.append(f"{backend.name.lower()}: yes")
            except RuntimeError as err:
                verdicts.append(f"{backend.name.lower()}: no ({str(err).splitlines()[0][:60]})")
        lines.append(f"  {label} at head dimension {shape_q[-1]}: " + "; ".join(verdicts))
    return lines


def bench_shape(T: int, tokens: int, d: int, dtype: torch.dtype, rep_ms: int, d_model: int = D_MODEL,
                device: str = "cuda", rounds: int = 1) -> list[dict]:
    """The table's rows at one (T, d), with the ratios of each forward+backward to cuDNN's and to TRA's. With
    ``rounds`` > 1 every method is timed once per round, the methods in turn, and each row holds the median of its
    rounds (host µs from the first): a drift of the GPU's clock during the run then reaches every row alike."""
    B = max(1, tokens // T)
    H = d_model // d
    flops = 4 * B * H * T * T * d / 2
    timed: dict[str, list[dict]] = {}
    rows_of = methods(B, T, H, d, dtype, device)
    for i in range(rounds):
        for name, (forward, leaves) in rows_of.items():
            if i and name not in timed:
                continue  # refused in the first round
            try:
                timed.setdefault(name, []).append(timing.measure(forward, leaves, rep_ms, host=i == 0,
                                                                 memory=False))
            except RuntimeError as err:  # a backend that refuses the shape on this GPU
                print(f"  {name}: unavailable ({str(err).splitlines()[0][:80]})", flush=True)
                timed.pop(name, None)
    rows = [dict(T=T, B=B, H=H, d=d, method=name, flops=flops,
                 fwd=statistics.median(r["fwd"] for r in runs), fwd_bwd=statistics.median(r["fwd_bwd"] for r in runs),
                 host_us=runs[0]["host_us"]) for name, runs in timed.items()]
    base = {r["method"]: r["fwd_bwd"] for r in rows}
    for r in rows:
        r["x_cudnn"] = r["fwd_bwd"] / base.get("sdpa-cudnn", float("nan"))
        r["x_tra"] = r["fwd_bwd"] / base.get("tra", float("nan"))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| T | B | method | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | ×cuDNN | ×TRA | host µs |",
             "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['T']} | {r['B']} | {r['method']} | {r['fwd']:.3f} | {r['flops'] / r['fwd'] / 1e9:.0f} "
                     f"| {r['fwd_bwd']:.3f} | {3.5 * r['flops'] / r['fwd_bwd'] / 1e9:.0f} | {r['x_cudnn']:.2f} "
                     f"| {r['x_tra']:.2f} | {r['host_us']:.0f} |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, read off the table: sigmoid fwd+bwd ≤ 1.1× cuDNN at T ≥ 8192 and ≤ 1.05× TRA; softpick
    ≤ 1.25× cuDNN."""
    lines = []
    for r in rows:
        if r["method"] in ("sigmoid", "sigmoid, Gluon fwd"):
            lines.append(f"  T={r['T']}: {r['method']} {r['x_cudnn']:.2f}× cuDNN (target ≤ 1.10 at T ≥ 8192), "
                         f"{r['x_tra']:.2f}× TRA (target ≤ 1.05)")
        if r["method"] in ("softpick", "softpick, Gluon fwd"):
            lines.append(f"  T={r['T']}: {r['method']} {r['x_cudnn']:.2f}× cuDNN (target ≤ 1.25)")
    return lines


SIGMOID_FWD_TILES = [TileConfig(128, 32, 4, 3), TileConfig(64, 64, 4, 3), TileConfig(128, 64, 8, 3)]
NORMALIZED_FWD_TILES = [TileConfig(128, 64, 8, 3), TileConfig(128, 64, 4, 3), TileConfig(128, 32, 4, 3)]
GLUON_TILES = [(64, 2), (32, 2), (64, 3), (32, 3)]  # (query rows per tile, ring stages); (64, 2): d = 64's default
DKDV_TILES = [TileConfig(64, 64, 4, 3), TileConfig(32, 128, 8, 3), TileConfig(128, 64, 8, 2)]


def sweep(T: int, tokens: int, d: int, dtype: torch.dtype, rep_ms: int, d_model: int = D_MODEL,
          device: str = "cuda") -> None:
    """Time tile candidates of the forward and of the dK/dV kernel, the Gluon backward's tiles (on Hopper) against the
    Triton one, σ's evaluations (division, or the default
    polynomial; the bias folded into the scores), db's sum over queries (a product with ones; a reduction) and the atomic-free dQ
    kernel, each launcher alone, at one shape. Each line is one launcher call: a forward, or a whole backward (Δ
    pre-pass, dK/dV, dQ) with the other kernels at their defaults."""
    B = max(1, tokens // T)
    H = d_model // d
    q, k, v = (projection(B, T, H, d, dtype, device=device).detach() for _ in range(3))
    bias = torch.full((H,), -math.log(T), device=device)
    sink = torch.zeros(H, device=device)
    scale = d ** -0.5
    fl = 4 * B * H * T * T * d / 2
    do = torch.randn_like(q)
    out, lse = normalized_launch.forward(q, k, v, None, scale, 1e-6, True)
    out_s, lse_s = normalized_launch.forward(q, k, v, sink, scale, 0.0, True)

    def report(what: str, fn: Callable[[], object], flops: float) -> None:
        try:
            ms = timing.time_ms(fn, [], rep_ms)
        except Exception as err:  # out of resources or a compile failure: report and go on
            print(f"  {what}: failed ({type(err).__name__}: {str(err)[:80]})", flush=True)
            return
        print(f"  {what}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s", flush=True)

    print(f"sweep at T={T} B={B} H={H} d={d}")
    for tile in SIGMOID_FWD_TILES:
        report(f"sigmoid fwd {tile.describe()}",
               lambda: sigmoid_launch.forward(q, k, v, bias, scale, True, tile=tile), fl)
    report("sigmoid fwd σ by division", lambda: sigmoid_launch.forward(q, k, v, bias, scale, True, mode=0), fl)
    report("sigmoid fwd bias folded", lambda: sigmoid_launch.forward(q, k, v, bias, scale, True, fold_bias=True), fl)
    report("sigmoid bwd Triton (dK/dV default tile)",
           lambda: sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, gluon=False), 2.5 * fl)
    gluon = score_gluon.gluon_backward_fits(do, q, k, v)
    if not gluon:
        print("  (no Gluon lines: the Gluon backward does not run on this GPU or Triton)", flush=True)
    for block_m, stages in GLUON_TILES if gluon else []:
        report(f"sigmoid bwd Gluon {block_m} query rows, {stages} stages",
               lambda: sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, gluon=True,
                                               gluon_tile=(block_m, stages)), 2.5 * fl)
    for tile in DKDV_TILES:
        report(f"sigmoid bwd dK/dV {tile.describe()}",
               lambda: sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, dkdv_tile=tile), 2.5 * fl)
    report("sigmoid bwd σ by division",
           lambda: sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, mode=0), 2.5 * fl)
    report("sigmoid bwd db by a reduction across warps",
           lambda: sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, db_by_dot=False), 2.5 * fl)
    report("sigmoid bwd dQ kernel (no atomics)",
           lambda: sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, atomic_dq=False), 2.5 * fl)
    for tile in NORMALIZED_FWD_TILES:
        report(f"softpick fwd {tile.describe()}",
               lambda: normalized_launch.forward(q, k, v, None, scale, 1e-6, True, tile=tile), fl)
    report("softpick bwd Triton (dK/dV default tile)",
           lambda: normalized_launch.backward(do, q, k, v, out, lse, None, scale, True, False, False, gluon=False),
           2.5 * fl)
    for block_m, stages in GLUON_TILES if gluon else []:
        report(f"softpick bwd Gluon {block_m} query rows, {stages} stages",
               lambda: normalized_launch.backward(do, q, k, v, out, lse, None, scale, True, False, False, gluon=True,
                                                  gluon_tile=(block_m, stages)), 2.5 * fl)
    for tile in DKDV_TILES:
        report(f"softpick bwd dK/dV {tile.describe()}",
               lambda: normalized_launch.backward(do, q, k, v, out, lse, None, scale, True, False, False,
                                                  dkdv_tile=tile), 2.5 * fl)
    report("softpick bwd dQ kernel (no atomics)",
           lambda: normalized_launch.backward(do, q, k, v, out, lse, None, scale, True, False, False, atomic_dq=False),
           2.5 * fl)
    report("sink fwd", lambda: normalized_launch.forward(q, k, v, sink, scale, 0.0, True), fl)
    report("sink bwd", lambda: normalized_launch.backward(do, q, k, v, out_s, lse_s, sink, scale, True, True, False),
           2.5 * fl)
    report("sink bwd Triton", lambda: normalized_launch.backward(do, q, k, v, out_s, lse_s, sink, scale, True, True,
                                                                 False, gluon=False), 2.5 * fl)
    if gluon:  # the Gluon backward alone (no Δ pre-pass), each mode on the same inputs: the modes' own cost
        grads = [torch.empty_like(t) for t in (q, k, v)] + [torch.zeros(B, H, T, d, device=device)]
        delta = torch.zeros(B, H, T, device=device)
        for mode, L, name in (("softpick", lse, "softpick's L"), ("softpick", lse_s, "the sink's L"),
                              ("sink", lse, "softpick's L"), ("sink", lse_s, "the sink's L"), ("sigmoid", None, "")):
            param = bias if mode == "sigmoid" else sink
            report(f"Gluon backward alone, {mode} mode" + (f", {name}" if name else ""),
                   lambda: score_gluon.backward(mode, do, q, k, v, *grads, scale, True, param=param, lse=L,
                                                delta=delta), 2.5 * fl)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64])
    parser.add_argument("--tokens", type=int, default=16384, help="B·T per shape")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--rep-ms", type=int, default=100, help="timing window per measurement")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every method this many times, in turn, and report each one's median")
    parser.add_argument("--sweep", action="store_true", help="then time tile candidates and variants")
    parser.add_argument("--sweep-seq", type=int, default=8192)
    parser.add_argument("--sweep-rep-ms", type=int, default=50)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.sink_free needs a CUDA GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    header = timing.run_header(args.dtype, *([f"median of {args.rounds} rounds"] if args.rounds > 1 else []))
    print(header)
    rows = []
    for d in args.head_dims:
        print("\n".join(sdpa_backends(4096, d, dtype)), flush=True)
        for T in args.seq:
            shape_rows = bench_shape(T, args.tokens, d, dtype, args.rep_ms, rounds=args.rounds)
            print(format_table(shape_rows), flush=True)
            rows += shape_rows
    if args.sweep:
        for d in args.head_dims:
            sweep(args.sweep_seq, args.tokens, d, dtype, args.sweep_rep_ms)
    print("\n" + header + "\n" + format_table(rows) + "\n" + "\n".join(targets(rows)))


if __name__ == "__main__":
    main()
