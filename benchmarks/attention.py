"""GPU benchmark: the fused threshold-attention kernels against torch's softmax attention.

    python -m benchmarks.attention                     # the table (BENCHMARKS.md records runs of it)
    python -m benchmarks.attention --seq 4096 --sweep  # also time every tile candidate of the kernels
    python -m benchmarks.attention --seq 4096 --head-dims 64 --sweep --sweep-parts dv-apart --sweep-views 2 \
        --no-reference
    python -m benchmarks.attention --dense --skip-ab   # inputs whose every tile holds a survivor; skipping on/off
    python -m benchmarks.attention --from-run runs/<name> [--train-first "+experiment=paper_small ..."]
                                                       # a trained run's own q, k, v (benchmarks.captured)

For each sequence length T (batch B = tokens / T) and head size, forward and forward+backward of
  sdpa-cudnn, sdpa-flash  causal softmax, torch SDPA forced to the cuDNN / FlashAttention-2 backend,
                          n_head heads of dimension d
  tda (paired)            our TDA kernels, n_head/2 heads, q/k dimension d, v dimension 2d: the
                          parameter-matched layout, exactly softmax's FLOPs (on Hopper with d = 64, the
                          forward and the backward are Gluon kernels, gluon_forward.py, gluon_backward.py)
  tda (paired), Triton fwd the same with the Triton forward where the Gluon one is the default only through
                          launch.GLUON_FORWARD_D128 (q/k 128 on Hopper): the two forwards side by side
  tra                     our one-view kernel, n_head heads of dimension d
  reference               the exact PyTorch TDA (kernels/threshold/reference.py), same shapes as tda
Inputs are laid out as the model makes them (a (B, T, heads, d) projection viewed as (B, heads, T, d)),
bf16 by default, q/k drawn so that a stated share of the causal weights survives at beta = 1 (printed),
lambda a learnable (H,) tensor; normalisation is inside the timed TDA/TRA calls. "tiles" is the share of the
64 × 64 causal tiles holding a surviving weight (the forward's own record; softmax's are all occupied): random rows
(--rho 0.5) leave some tiles empty, ``--dense`` draws q and k with a shared direction strong enough that every tile
holds survivors (the cost of skipping where nothing can be skipped). Exact skipping is on in the tda/tra rows;
``--skip-ab`` adds the same calls with it off ("no skip") and a table of the forward alone without the record,
with it, with it and the products of empty tiles left out, and (the Gluon forward) with the bound before the exact
scores as well (gluon_forward.BOUND; on by default).
Times are medians of CUDA-event timings (triton.testing.do_bench). TFLOP/s counts matrix-product
FLOPs of the causal half: softmax forward 4·B·H·T²·d/2, backward 2.5× forward; threshold attention
forward 2·B·H·(T²/2)·(views·d + dv), backward 2·B·H·(T²/2)·(3·views·d + 2·dv).
"ratio" is fwd+bwd time over the faster SDPA backend's fwd+bwd at the same T and d_model.
"host µs" is the CPU time to issue one forward+backward (measured while a sleep kernel keeps the GPU
busy): where it exceeds the GPU time, the call is host-bound (not measured for the reference). ``--graphs`` also
replays the SDPA rows and each threshold row with skipping on from a CUDA graph (benchmarks.timing.replay_ms):
"graphed fwd+bwd ms" is then the GPU's time without the host's, "graphed ratio" that over the faster SDPA backend's.
"""

import argparse
import dataclasses
from typing import Callable, Optional
from unittest.mock import patch

import torch

from benchmarks.timing import measure, projection, run_header, sdpa_rows, tile_occupancy, time_ms
from kernels.common import CompileTarget
from kernels.threshold import launch
from kernels.threshold.autograd import threshold_attention_triton
from kernels.threshold.options import ThresholdOptions
from kernels.threshold.reference import threshold_attention_reference
from kernels.threshold.tiles import BackwardPlan, TileConfig, forward_configs

D_MODEL = 768
DENSE_RHO = 1.0  # mean cosine 0.5 against thresholds of at most 0.55 (d = 64, T <= 16384): every tile holds survivors


def _tda_inputs(B: int, T: int, H: int, d: int, dv: int, dtype: torch.dtype, views: int,
                rho: float, device: str = "cuda") -> dict:
    """q/k per view sharing a per-head unit direction with weight rho (sets the survivor share; DENSE_RHO: every
    tile occupied)."""
    out = {}
    for view in range(1, views + 1):
        u = torch.nn.functional.normalize(torch.randn(1, 1, H, d, device=device), dim=-1)
        out[f"q{view}"] = projection(B, T, H, d, dtype, u, rho, device)
        out[f"k{view}"] = projection(B, T, H, d, dtype, u, rho, device)
    out["v"] = projection(B, T, H, dv, dtype, device=device)
    if views == 2:
        out["lam"] = torch.full((H,), 0.5, device=device, requires_grad=True)
    return out


def paired_whole(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of _tda_inputs' two views ``x`` whole, as kernels.threshold_attention_paired takes them (the model's
    call): new leaves (B, 2H, T, d) in the projection layout whose heads 2h and 2h + 1 hold view 1's and view 2's
    head h."""
    def whole(view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        t = torch.stack((view1.detach(), view2.detach()), dim=2).flatten(1, 2)
        return t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    return whole(x["q1"], x["q2"]), whole(x["k1"], x["k2"])


def occupancy_of(x: dict, beta: float = 1.0, p: float = 2.0) -> float:
    """tile_occupancy of inputs ``x`` (q1, k1, v[, q2, k2, lam]), from the record of one forward."""
    args = [x[n].detach() if x.get(n) is not None else None for n in ("q1", "k1", "v", "q2", "k2")]
    H = args[0].shape[1]
    lam = x["lam"].detach() if x.get("lam") is not None else None
    *_, rec = launch.forward(*args, lam, torch.full((H,), beta, device=args[0].device), ThresholdOptions(p=p),
                             record=True)
    return tile_occupancy(rec, args[0].shape[2], args[1].shape[2])


def survivor_share(x: dict, rows: int = 512) -> float:
    """Share of causal weights of the first head's last ``rows`` rows that are non-zero (view 1)."""
    q, k = x["q1"][0, 0].float(), x["k1"][0, 0].float()
    T, d = q.shape
    rows = min(rows, T)
    q, k = torch.nn.functional.normalize(q[-rows:], dim=-1), torch.nn.functional.normalize(k, dim=-1)
    pos = torch.arange(T - rows, T, device=q.device)
    tau = torch.sqrt(2 * torch.log1p(pos.float()) / d)
    keep = torch.arange(T, device=q.device)[None, :] <= pos[:, None]
    return ((q @ k.T > tau[:, None]) & keep).sum().item() / keep.sum().item()


def _flops_threshold(B, H, T, d, dv, views) -> tuple[float, float]:
    half = B * H * T * T / 2
    return 2 * half * (views * d + dv), 2 * half * (3 * views * d + 2 * dv)


def _threshold_rows(name: str, x: dict, views: int, d: int, dv: int, rep_ms: int, skip_ab: bool,
                    with_reference: bool = False, graphs: bool = False) -> list[dict]:
    """Rows of the kernels on inputs ``x`` (views 2: paired TDA; 1: TRA) with exact skipping on (the default; with
    ``graphs`` also replayed from CUDA graphs), and off with ``skip_ab``; of the exact reference if asked."""
    B, H, T, _ = x["q1"].shape
    args = [x[n] for n in ("q1", "k1", "v", "q2", "k2")] if views == 2 else [x["q1"], x["k1"], x["v"]]
    lam = dict(lam=x["lam"]) if views == 2 else {}
    grads = args + ([x["lam"]] if views == 2 else [])
    common_ = dict(H=H, d=d, dv=dv, share=survivor_share(x), occupancy=occupancy_of(x),
                   flops=_flops_threshold(B, H, T, d, dv, views))
    rows = [dict(method=name, **common_, **measure(lambda: threshold_attention_triton(*args, **lam), grads, rep_ms,
                                                   graphs=graphs))]
    if skip_ab:
        r = measure(lambda: threshold_attention_triton(*args, **lam, skip_empty=False), grads, rep_ms)
        rows.append(dict(method=f"{name}, no skip", **common_, **r))
    if with_reference:
        r = measure(lambda: threshold_attention_reference(*args, **lam), grads, max(50, rep_ms // 4), host=False)
        rows.append(dict(method=f"reference ({name.split()[0]})", **common_, **r))
    return rows


def _switched_off_rows(x: dict, d: int, rep_ms: int, graphs: bool, switch: str, fits, label: str) -> list[dict]:
    """Paired TDA again with launch.<switch> off, where that switch alone decides whether ``fits(q1, k1, v, q2, k2)``
    (a Gluon kernel at q/k 128 on Hopper): the rows named ``label``; none elsewhere."""
    args = [x[n] for n in ("q1", "k1", "v", "q2", "k2")]
    with patch.object(launch, switch, True):
        if not fits(*args):
            return []
    with patch.object(launch, switch, False):
        if fits(*args):
            return []
        rows = _threshold_rows("tda (paired)", x, 2, d, 2 * d, rep_ms, False, graphs=graphs)
    return [dict(r, method=label) for r in rows]


def triton_forward_rows(x: dict, d: int, rep_ms: int, graphs: bool = False) -> list[dict]:
    """Paired TDA again with the Triton forward (launch.GLUON_FORWARD_D128 off) where that switch alone gives the Gluon
    forward by default (Hopper, q/k 128, v 128 or 256): the row "tda (paired), Triton fwd"."""
    return _switched_off_rows(x, d, rep_ms, graphs, "GLUON_FORWARD_D128", lambda *a: launch.gluon_forward_fits(*a),
                              "tda (paired), Triton fwd")


def triton_backward_rows(x: dict, d: int, rep_ms: int, graphs: bool = False) -> list[dict]:
    """Paired TDA again with the Triton backward (launch.GLUON_BACKWARD_D128 off) where that switch alone gives the
    Gluon backward by default (Hopper, q/k 128, v 128 or 256): the row "tda (paired), Triton bwd". (v stands in for dO
    in the check: same shape, dtype and layout.)"""
    return _switched_off_rows(x, d, rep_ms, graphs, "GLUON_BACKWARD_D128",
                              lambda q1, k1, v, q2, k2: launch.gluon_backward_fits(v, q1, k1, v, q2, k2),
                              "tda (paired), Triton bwd")


def forward_variants(x: dict, views: int, rep_ms: int) -> list[str]:
    """Table lines timing the forward alone (launch.forward) on inputs ``x``: without the record, with it, and with
    it and the products of tiles without a survivor left out (the Triton kernel: by its tile's skip_empty), and (the
    Gluon forward's own) with the bound before the exact scores as well; for the Gluon forward where it fits (the
    default there) and for the Triton kernel at its first tile."""
    from kernels.threshold import gluon_forward

    args = [x[n].detach() if x.get(n) is not None else None for n in ("q1", "k1", "v", "q2", "k2")]
    B, H, T, d = args[0].shape
    lam = x["lam"].detach() if views == 2 else None
    beta = torch.ones(H, device=args[0].device)
    first = forward_configs(d, args[2].shape[-1], views == 2, args[0].element_size())[0]
    kernels = [("Gluon", None)] if launch.gluon_forward_fits(*args) else []
    kernels.append((f"Triton {first.describe()}", first))
    lines = []
    for label, tile in kernels:
        times = []
        for record, skip, bound in ((False, False, False), (True, False, False), (True, True, False),
                                    (True, True, True)):
            if bound and tile is not None:
                times.append(None)  # the bound is the Gluon forward's
                continue
            tile_ = dataclasses.replace(tile, skip_empty=skip) if tile is not None else None
            with patch.object(gluon_forward, "BOUND", bound):
                times.append(time_ms(lambda: launch.forward(*args, lam, beta, ThresholdOptions(), record=record,
                                                          skip_products=skip, tile=tile_), [], rep_ms))
        lines.append(f"| {T} | {B} | {'tda (paired)' if views == 2 else 'tra'} {H}×{d} | {label} | "
                     + " | ".join("—" if t is None else f"{t:.3f}" for t in times) + " |")
    return lines


FORWARD_HEAD = ("| T | B | layout | forward kernel | ms, no record | ms, record | ms, record + products of empty tiles "
                "skipped | the same + bound |\n|---|---|---|---|---|---|---|---|")


def bench_shape(T: int, tokens: int, d: int, dtype: torch.dtype, rho: float, with_reference: bool,
                rep_ms: int, skip_ab: bool = False, forward_lines: Optional[list] = None,
                graphs: bool = False) -> list[dict]:
    """Rows of the table for one (T, d): SDPA backends, paired TDA (+ reference), TRA, each threshold row also
    without skipping with ``skip_ab`` (and then the forward alone's variants added to ``forward_lines``); with
    ``graphs`` the SDPA and default threshold rows are also replayed from CUDA graphs ("ratio_graph": against the
    faster SDPA backend's replay)."""
    B = max(1, tokens // T)
    H = D_MODEL // d
    x = _tda_inputs(B, T, H // 2, d, 2 * d, dtype, 2, rho)
    y = _tda_inputs(B, T, H, d, d, dtype, 1, rho)
    rows = (sdpa_rows(B, T, H, d, dtype, rep_ms, graphs=graphs)
            + _threshold_rows("tda (paired)", x, 2, d, 2 * d, rep_ms, skip_ab, with_reference, graphs=graphs)
            + triton_forward_rows(x, d, rep_ms, graphs=graphs)
            + triton_backward_rows(x, d, rep_ms, graphs=graphs)
            + _threshold_rows("tra", y, 1, d, d, rep_ms, skip_ab, graphs=graphs))
    if skip_ab and forward_lines is not None:
        forward_lines += forward_variants(x, 2, rep_ms) + forward_variants(y, 1, rep_ms)
    for r in rows:
        r.update(T=T, B=B)
    for time_key, ratio_key in (("fwd_bwd", "ratio"), ("fwd_bwd_graph", "ratio_graph")):
        best = min((r[time_key] for r in rows if r["method"].startswith("sdpa") and time_key in r),
                   default=float("nan"))
        for r in rows:
            if time_key in r:
                r[ratio_key] = r[time_key] / best
    return rows


def format_table(rows: list[dict]) -> str:
    """The table; where any row was replayed from CUDA graphs (--graphs), two columns more: its graphed forward+backward
    and that over the faster SDPA backend's graphed one ("–" for rows not replayed)."""
    graphed = any("fwd_bwd_graph" in r for r in rows)
    head = ("| T | B | method | heads×d (v) | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s "
            "| ratio | peak MiB | host µs | survivors | tiles |" + (" graphed fwd+bwd ms | graphed ratio |" if graphed
                                                                  else ""))
    lines = [head, "|" + "---|" * (15 if graphed else 13)]
    for r in rows:
        fl_f, fl_b = r["flops"]
        tf_f = fl_f / r["fwd"] / 1e9
        tf_fb = (fl_f + fl_b) / r["fwd_bwd"] / 1e9
        share = f"{100 * r['share']:.1f}%" if "share" in r else ""
        tiles = f"{100 * r['occupancy']:.1f}%" if "occupancy" in r else "100%"
        lines.append(f"| {r['T']} | {r['B']} | {r['method']} | {r['H']}×{r['d']} ({r['dv']}) "
                     f"| {r['fwd']:.3f} | {tf_f:.0f} | {r['fwd_bwd']:.3f} | {tf_fb:.0f} "
                     f"| {r['ratio']:.2f} | {r['mem']:.0f} | {r['host_us']:.0f} | {share} | {tiles} |")
        if graphed:
            lines[-1] += (f" {r['fwd_bwd_graph']:.3f} | {r['ratio_graph']:.2f} |" if "fwd_bwd_graph" in r
                          else " – | – |")
    return "\n".join(lines)


SWEEP_PARTS = ("fwd", "dkdv", "dv-apart", "dq")


def sweep(T: int, tokens: int, d: int, dtype: torch.dtype, rep_ms: int, parts: tuple = SWEEP_PARTS,
          views_list: tuple = (2, 1)) -> None:
    """Time tile candidates of the forward, dK/dV and dQ kernels (paired TDA and TRA at d), both dQ
    paths (atomics in the dK/dV kernel, or the dQ kernel) and dV apart (dK and dV launched separately,
    dQ by atomics), beside cuDNN's and FlashAttention-2's
    softmax at the same shape; the backward rows time the whole backward with the other kernels at
    their defaults."""
    B = max(1, tokens // T)
    H = D_MODEL // d
    fwd = [TileConfig(*c, tma=tma) for c in ((128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3),
                                             (128, 64, 4, 3), (64, 64, 4, 4), (128, 128, 8, 2)) for tma in (False, True)]
    fwd += [TileConfig(*c, tma=tma, skip_empty=True) for c in ((64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 4, 3))
            for tma in (False, True)]
    bwd = [TileConfig(*c) for c in ((32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 2),
                                    (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (32, 64, 8, 2),
                                    (16, 128, 8, 3), (32, 128, 8, 2))]
    bwd += [TileConfig(*c, tma=True) for c in ((32, 128, 8, 3), (32, 128, 8, 2), (64, 64, 4, 2), (64, 128, 8, 2))]
    bwd += [TileConfig(*c, query_major=qm, tma=tma, skip_empty=True)
            for c, qm in (((32, 128, 8, 3), False), ((64, 64, 4, 3), True)) for tma in (False, True)]
    bwd += [TileConfig(*c, query_major=True) for c in (
        (32, 128, 8, 3), (64, 128, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2),
        (128, 64, 8, 2), (128, 128, 8, 2), (64, 128, 4, 2), (128, 32, 8, 2))]
    dv_tiles = [TileConfig(*c, query_major=qm, tma=tma) for c in ((64, 128, 8, 2), (32, 128, 8, 3), (64, 64, 4, 3),
                                                                   (32, 128, 8, 2))
                for qm in (False, True) for tma in (False, True)]
    dv_tiles += [TileConfig(*c, tma=tma, skip_empty=True) for c in ((64, 128, 8, 2), (32, 128, 8, 3))
                 for tma in (False, True)]
    dq = [TileConfig(*c, tma=tma) for c in ((128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 2),
                                            (128, 64, 8, 2)) for tma in (False, True)]
    dq += [TileConfig(*c, tma=tma, skip_empty=True) for c in ((128, 64, 8, 3), (128, 32, 8, 2))
           for tma in (False, True)]
    for r in sdpa_rows(B, T, H, d, dtype, rep_ms):
        print(f"  reference {r['method']} H={H} d={d} T={T} B={B}: fwd {r['fwd']:.3f} ms, "
              f"fwd+bwd {r['fwd_bwd']:.3f} ms", flush=True)
    for views, heads, dv in ((2, H // 2, 2 * d), (1, H, d)):
        if views not in views_list:
            continue
        x = _tda_inputs(B, T, heads, d, dv, dtype, views, 0.3)
        q1, k1, v = (x[n].detach() for n in ("q1", "k1", "v"))
        q2, k2 = (x["q2"].detach(), x["k2"].detach()) if views == 2 else (None, None)
        lam = x["lam"].detach() if views == 2 else None
        beta = torch.ones(heads, device="cuda")
        fl_f, fl_b = _flops_threshold(B, heads, T, d, dv, views)
        options = ThresholdOptions()
        out, *saved = launch.forward(q1, k1, v, q2, k2, lam, beta, options)
        do = torch.randn_like(out)
        label = f"views={views} H={heads} d={d} dv={dv} T={T} B={B}"

        def forward(tile: Optional[TileConfig] = None) -> Callable[..., object]:
            return lambda target=None: launch.forward(q1, k1, v, q2, k2, lam, beta, options, tile=tile, target=target)

        def backward(**plan) -> Callable[..., object]:
            plan.setdefault("fused", False)  # the Triton kernels' tiles, unless the fused Gluon kernel is asked for
            return lambda target=None: launch.backward(do, q1, k1, v, q2, k2, *saved, lam, beta, options,
                                                       views == 2, False, False, plan=BackwardPlan(**plan),
                                                       target=target)

        if "fwd" in parts and launch.gluon_forward_fits(q1, k1, v, q2, k2):
            from kernels.threshold.gluon_forward import TILE as FORWARD_TILE
            _report("fwd (Gluon)", label, FORWARD_TILE, fl_f, forward(), "fused_fwd", rep_ms)
        for cfg in fwd if "fwd" in parts else []:
            _report("fwd", label, cfg, fl_f, forward(cfg), "fwd", rep_ms)
        if views == 2 and "dkdv" in parts and launch.gluon_backward_fits(do, q1, k1, v, q2, k2):
            from kernels.threshold.gluon_backward import TILE
            _report("bwd fused (Gluon)", label, TILE, fl_b, backward(fused=True), "fused", rep_ms)

        for atomic in (False, True):
            for cfg in bwd if "dkdv" in parts else []:
                _report(f"bwd atomic_dq={atomic} (dK/dV tiles)", label, cfg, fl_b,
                        backward(dkdv_tile=cfg, atomic_dq=atomic), "dkdv", rep_ms)
        for cfg in bwd if "dv-apart" in parts else []:
            _report("bwd dV apart (dK tiles)", label, cfg, fl_b,
                    backward(dkdv_tile=cfg, atomic_dq=True, dv_apart=True), "dkdv", rep_ms)
        for cfg in dv_tiles if "dv-apart" in parts else []:
            _report("bwd dV apart (dV tiles)", label, cfg, fl_b,
                    backward(atomic_dq=True, dv_apart=True, dv_tile=cfg), "dv", rep_ms)
        for cfg in dq if "dq" in parts else []:
            _report("bwd dQ kernel (dQ tiles)", label, cfg, fl_b, backward(dq_tile=cfg, atomic_dq=False), "dq",
                    rep_ms)


def compiled_kernel(run: Callable[..., object], part: str) -> object:
    """The compiled kernel of ``part`` that ``run(target=...)`` launches, as Triton has it (after a launch, the
    loaded one, with its registers and spills)."""
    major, minor = torch.cuda.get_device_capability()
    target = CompileTarget(10 * major + minor)
    run(target=target)
    return target.compiled.get(part)


def _report(what: str, label: str, cfg: TileConfig, flops: float, run: Callable[..., object], part: str,
            rep_ms: int) -> None:
    try:
        ms = time_ms(run, [], rep_ms)
    except Exception as err:  # out of resources or a compile failure: report and go on
        print(f"  {what:30s} {label} {cfg.describe()}: failed ({type(err).__name__}: {str(err)[:80]})")
        return
    c = compiled_kernel(run, part)
    regs = f"regs={getattr(c, 'n_regs', '?')} spills={getattr(c, 'n_spills', '?')}"
    print(f"  {what:30s} {label} {cfg.describe()}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s {regs}", flush=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=None,
                        help="sequence lengths (default 1024 … 16384; with --from-run 2048 … 16384)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--tokens", type=int, default=None,
                        help="B·T per shape (default 16384; with --from-run 65536, so that the GPU is timed)")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--rho", type=float, default=0.5,
                        help="weight of the shared q/k direction (sets the survivor share)")
    parser.add_argument("--dense", action="store_true",
                        help=f"q/k with a shared direction of weight {DENSE_RHO} (every tile holds survivors)")
    parser.add_argument("--skip-ab", action="store_true",
                        help="also time every threshold row with exact skipping off, and the forward's variants")
    parser.add_argument("--rep-ms", type=int, default=200, help="timing window per measurement")
    parser.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--graphs", action="store_true",
                        help="also replay the SDPA and threshold rows from CUDA graphs: the GPU's time without the "
                             "host's (--from-run always does)")
    parser.add_argument("--sweep", action="store_true", help="time every tile candidate first")
    parser.add_argument("--sweep-parts", nargs="+", choices=SWEEP_PARTS, default=list(SWEEP_PARTS),
                        help="which kernels the sweep times")
    parser.add_argument("--sweep-views", type=int, nargs="+", choices=[1, 2], default=[2, 1],
                        help="paired TDA (2) and/or the one-view kernel (1) in the sweep")
    parser.add_argument("--from-run", metavar="RUN_DIR",
                        help="time each layer of this trained TDA/TRA run on its own q, k, v of held-out text "
                             "(benchmarks.captured) instead of random inputs")
    parser.add_argument("--train-first", metavar="OVERRIDES",
                        help="train the --from-run run first: `python train.py OVERRIDES` into RUN_DIR (skipped if "
                             "RUN_DIR exists), e.g. \"+experiment=paper_small trainer.max_steps=3000\"")
    args = parser.parse_args(argv)
    if args.train_first and not args.from_run:
        parser.error("--train-first needs --from-run RUN_DIR (where the run goes)")
    if args.dense and args.from_run:
        parser.error("--dense draws random inputs; --from-run times a run's own")
    args.seq = args.seq or ([2048, 4096, 8192, 16384] if args.from_run else [1024, 2048, 4096, 8192, 16384])
    args.tokens = args.tokens or (65536 if args.from_run else 16384)
    if args.dense:
        args.rho = DENSE_RHO
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.attention needs a CUDA GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    print(run_header(args.dtype, *([] if args.from_run else [f"rho {args.rho}" + (" (dense)" if args.dense else "")])))
    if args.from_run:
        from benchmarks import captured

        captured.main(args, dtype)
        return
    if args.sweep:
        for d in args.head_dims:
            for T in args.seq:
                sweep(T, args.tokens, d, dtype, args.rep_ms, tuple(args.sweep_parts), tuple(args.sweep_views))
    rows, forward_lines = [], []
    for d in args.head_dims:
        for T in args.seq:
            shape_rows = bench_shape(T, args.tokens, d, dtype, args.rho, not args.no_reference,
                                     args.rep_ms, args.skip_ab, forward_lines, args.graphs)
            print(format_table(shape_rows), flush=True)
            rows += shape_rows
    if forward_lines:
        print("\n" + FORWARD_HEAD + "\n" + "\n".join(forward_lines))
    print("\n" + format_table(rows))


if __name__ == "__main__":
    main()
