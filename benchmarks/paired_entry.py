"""The model's paired TDA call two ways (GPU): the four views of q and k whole given apart, which makes autograd build
each view's gradient as a zero-filled tensor of the whole's size and add the two, against the paired entry
(kernels.threshold_attention_paired), which writes the gradients of q and k whole; cuDNN's softmax beside.

    python -m benchmarks.paired_entry                       # T = 4096, 8192, 16384; d = 64; B·T = 16384; bf16
    python -m benchmarks.paired_entry --seq 8192 --rep-ms 100

Paired 6 × 64 (v 128; cuDNN 12 × 64), q and k whole leaves (B, 12, T, 64) in the projection layout, as the model
makes them; inputs "dense" (every tile occupied, benchmarks.attention's DENSE_RHO) and "ρ 0.5" (its usual draw).
Forward+backward ms are medians of CUDA-event timings over ``--rep-ms`` (timing.time_ms); host µs is one mean of 20
calls issued while the GPU is kept busy (timing.host_us). The two calls' outputs are checked equal (bits) first.
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch

D_MODEL, HEAD_DIM = 768, 64


def compare(B: int, T: int, dense: bool, rep_ms: int, device: str = "cuda", warmups: int = 3) -> dict:
    """{method: (forward+backward ms, host µs)} for "cudnn", "views" (the views given apart) and "paired" (the paired
    entry) at one shape, each call made ``warmups`` times first; raises if the two TDA calls' outputs differ."""
    from torch.nn.attention import SDPBackend

    from benchmarks import attention as bench
    from benchmarks import timing
    from kernels.threshold.autograd import paired_threshold_attention_triton, threshold_attention_triton

    pairs = D_MODEL // HEAD_DIM // 2
    x = bench._tda_inputs(B, T, pairs, HEAD_DIM, 2 * HEAD_DIM, torch.bfloat16, 2,
                          bench.DENSE_RHO if dense else 0.5, device)
    q, k = bench.paired_whole(x)
    v, lam = x["v"], x["lam"]
    sm = [timing.projection(B, T, 2 * pairs, HEAD_DIM, torch.bfloat16, device=device) for _ in range(3)]
    calls = dict(cudnn=(lambda: timing.causal_sdpa(*sm, SDPBackend.CUDNN_ATTENTION), sm),
                 views=(lambda: threshold_attention_triton(q[:, 0::2], k[:, 0::2], v, q[:, 1::2], k[:, 1::2], lam=lam),
                        [q, k, v, lam]),
                 paired=(lambda: paired_threshold_attention_triton(q, k, v, lam=lam), [q, k, v, lam]))
    if not torch.equal(calls["views"][0](), calls["paired"][0]()):
        raise AssertionError(f"T = {T}: the paired entry's output differs from the views given apart")
    out = {}
    for name, (forward, leaves) in calls.items():
        step = timing.fwd_bwd_step(forward, leaves)
        for _ in range(warmups):
            step()
        out[name] = (timing.time_ms(step, leaves, rep_ms), timing.host_us(step, 20))
    return out


def format_row(T: int, B: int, dense: bool, r: dict) -> str:
    """One markdown row of the table from compare's result."""
    return (f"| {T} | {B} | {'dense' if dense else 'ρ 0.5'} | {r['cudnn'][0]:.3f} | {r['views'][0]:.3f} | "
            f"{r['paired'][0]:.3f} | {r['paired'][0] / r['views'][0]:.3f} | "
            f"{r['cudnn'][1]:.0f} / {r['views'][1]:.0f} / {r['paired'][1]:.0f} |")


HEAD = ("| T | B | inputs | cuDNN fwd+bwd ms | views apart fwd+bwd ms | paired entry fwd+bwd ms | paired / views | "
        "host µs cuDNN / views / paired |\n|---|---|---|---|---|---|---|---|")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--tokens", type=int, default=16384, help="B·T per shape")
    parser.add_argument("--rep-ms", type=int, default=200, help="timing window per measurement")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.paired_entry needs a CUDA GPU")
    from benchmarks import timing

    print(timing.run_header("bf16") + "\n" + HEAD, flush=True)
    for T in args.seq:
        B = max(1, args.tokens // T)
        for dense in (True, False):
            print(format_row(T, B, dense, compare(B, T, dense, args.rep_ms)), flush=True)


if __name__ == "__main__":
    main()
