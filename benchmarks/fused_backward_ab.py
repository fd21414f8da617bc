"""A/B of the fused Gluon backward (kernels/threshold/gluon_backward.py) against the Triton split, and of variants of
it, on one Hopper GPU.

The fused kernel at its defaults is always measured as "fused", the Triton dK/dV + dQ kernels as "split". A variant
is a name and settings of module-level attributes of kernels.threshold.gluon_backward, e.g.
``--variant NAME:MAX_REGISTERS=VALUE``. Only attributes that the launcher reads at each call make a variant: at this
commit that is MAX_REGISTERS (the launch's maxnreg); an experiment branch adds its own (a switch the launcher passes
to the kernel as a constexpr). Attributes that the kernel reads as globals (BLOCK_M, STAGES, ...) cannot be switched
this way: Triton refuses to launch a kernel after a global it reads has changed. For each method:

1. exactness on awkward shapes (T = 1, 63, 200 without causal mask or normalisation, Tq = 100 against Tk = 300,
   T = 1111 with v 32; p = 1, 2, 3; lam outside [0, 1]; beta < 0 and 0): max |x - split| / max |split| for every
   gradient (dq differs by the order of the fp32 additions into its buffers, which varies from run to run);
2. the backward alone at the benchmark's paired shape (6 heads, q/k 64, v 128, B.T = 16384, bf16), median ms over
   ``--rep-ms`` windows, all methods alternating ``--rounds`` times, so that clocks drift alike, and the compiled
   kernels' registers and spills; once per ``--rho`` (the weight of the direction q and k share: 0.5 leaves part of
   the tiles empty, benchmarks.attention.DENSE_RHO occupies every one), each line with the forward record's tile
   occupancy, which the backward visits.

``--head-dim 128`` measures the paired layout of heads of 128 instead (q/k 128; v 256 in the timing shape, 3 heads,
and v 256 or 128 in the awkward shapes), where the fused backward is two launches (gluon_backward.passes); the
attributes passes() reads at each call (e.g. a branch's DV_ROWS) make variants there too.

Prints one line per shape and method and writes them to ``--out`` when given.

    python -m benchmarks.fused_backward_ab --seq 4096 8192 16384 --out ab.log
"""
import argparse
import ast
import sys
from pathlib import Path
from typing import Optional

GRADIENTS = ["dq1", "dk1", "dv", "dq2", "dk2", "dlam", "dbeta"]
# (T, Tq, causal, normalize, p, beta, dv)
AWKWARD = [(1, 1, True, True, 2.0, 1.0, 128), (63, 63, True, True, 1.0, 0.5, 128),
           (200, 200, False, False, 3.0, -1.0, 64), (300, 100, True, True, 2.0, 0.5, 128),
           (1111, 1111, True, True, 2.0, 0.0, 32)]


def parse_variant(text: str) -> tuple[str, dict]:
    """'name:ATTR=value,ATTR2=value' -> (name, {ATTR: value}); values are Python literals."""
    name, sep, settings = text.partition(":")
    if not sep or not name or not settings:
        raise argparse.ArgumentTypeError(f"expected NAME:ATTR=VALUE[,ATTR=VALUE], got {text!r}")
    values = {}
    for item in settings.split(","):
        attr, eq, literal = item.partition("=")
        if not eq or not attr.isidentifier():
            raise argparse.ArgumentTypeError(f"expected ATTR=VALUE in {text!r}, got {item!r}")
        try:
            values[attr] = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            raise argparse.ArgumentTypeError(f"{literal!r} in {text!r} is not a Python literal") from None
    if name in ("split", "fused"):
        raise argparse.ArgumentTypeError(f"{name!r} names a method that is always measured")
    return name, values


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", type=parse_variant, action="append", default=[],
                    help="NAME:ATTR=VALUE[,ATTR=VALUE] (attributes of kernels.threshold.gluon_backward)")
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--head-dim", type=int, choices=[64, 128], default=64,
                    help="q/k width of the paired heads (v twice that in the timing shape)")
    ap.add_argument("--rho", type=float, nargs="+", default=[0.5],
                    help="shared-direction weights of the timing inputs (1.0: every tile occupied)")
    ap.add_argument("--rep-ms", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the lines to this file")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.exit("benchmarks.fused_backward_ab needs a CUDA GPU (the fused backward is for Hopper)")
    from benchmarks.attention import _tda_inputs, compiled_kernel
    from benchmarks.timing import tile_occupancy, time_ms
    from kernels.threshold import gluon_backward as gb
    from kernels.threshold import launch
    from kernels.threshold.options import ThresholdOptions
    from kernels.threshold.tiles import BackwardPlan

    for name, values in args.variant:
        missing = [a for a in values if not hasattr(gb, a)]
        if missing:
            sys.exit(f"variant {name}: kernels.threshold.gluon_backward has no attribute {', '.join(missing)}")
    defaults = {a: getattr(gb, a) for _, values in args.variant for a in values}
    methods = {"split": None, "fused": {}, **dict(args.variant)}
    lines = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    def grads(call_args: tuple, method: str, target=None):
        for attr, value in defaults.items():
            setattr(gb, attr, value)
        for attr, value in (methods[method] or {}).items():
            setattr(gb, attr, value)
        return launch.backward(*call_args, plan=BackwardPlan(fused=method != "split"), target=target)

    def rel(a, b):
        return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()

    say(f"# {torch.cuda.get_device_name()} torch {torch.__version__}; variants: "
        + "; ".join(f"{n} {v}" for n, v in args.variant))
    torch.manual_seed(0)
    d = args.head_dim
    for T, Tq, causal, norm, p, beta_v, dv in AWKWARD:
        def mk(n, w):
            return torch.randn(2, n, 3, w, device="cuda").to(torch.bfloat16).transpose(1, 2)
        dv = dv if d == 64 else (256 if dv == 128 else 128)  # q/k 128 takes v of 128 or 256
        q1, k1, v, q2, k2 = mk(Tq, d), mk(T, d), mk(T, dv), mk(Tq, d), mk(T, d)
        lam, beta = torch.tensor([0.5, 1.3, -0.2], device="cuda"), torch.full((3,), beta_v, device="cuda")
        scale = 1.0 if norm else d ** -0.5
        options = ThresholdOptions(p=p, normalize=norm, scale=scale, causal=causal)
        out, *norms = launch.forward(q1, k1, v, q2, k2, lam, beta, options)
        call_args = (torch.randn_like(out), q1, k1, v, q2, k2, *norms, lam, beta, options, True, True, False)
        split = grads(call_args, "split")
        for method in list(methods)[1:]:
            got = grads(call_args, method)
            say(f"T={T} Tq={Tq} causal={causal} norm={norm} p={p} beta={beta_v} dv={dv} {method}: "
                + " ".join(f"{n}={rel(a, b):.1e}" for n, a, b in zip(GRADIENTS, got, split)))

    heads = 384 // d  # the benchmark's 768-wide model in paired heads
    parts = ["fused"] if d == 64 else ["fused", "fused_dv"]
    for T in args.seq:
        for i, rho in enumerate(args.rho):
            x = _tda_inputs(16384 // T, T, heads, d, 2 * d, torch.bfloat16, 2, rho)
            det = [x[n].detach() for n in ("q1", "k1", "v", "q2", "k2")]
            beta = torch.ones(heads, device="cuda")
            out, *norms = launch.forward(*det[:3], *det[3:], x["lam"].detach(), beta, ThresholdOptions(), record=True)
            call_args = (torch.randn_like(out), *det[:3], *det[3:], *norms, x["lam"].detach(), beta,
                         ThresholdOptions(), True, False, False)
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for method in methods:
                    times.setdefault(method, []).append(time_ms(lambda: grads(call_args, method), [], args.rep_ms))
            if i == 0:  # the compiled kernels do not depend on the inputs' values
                for method in list(methods)[1:]:
                    grads(call_args, method)
                    for part in parts:
                        c = compiled_kernel(lambda target=None: grads(call_args, method, target), part)
                        say(f"T={T} {method} {part}: registers {c.n_regs}, {4 * c.n_spills} bytes spilled")  # words
            occupied = tile_occupancy(norms[-1], T, T)
            say(f"T={T} rho={rho} tiles {100 * occupied:.1f}% backward ms: "
                + " | ".join(f"{k} {' '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()))
    for attr, value in defaults.items():
        setattr(gb, attr, value)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
