"""The kernels timed on a trained run's own attention inputs (``python -m benchmarks.attention --from-run``).

    python -m benchmarks.attention --from-run runs/<name> [--seq 2048 4096 8192 16384] [--tokens 65536]
    python -m benchmarks.attention --from-run runs/<name> --train-first "+experiment=paper_small trainer.max_steps=3000"

Random rows are not trained q and k: a trained TDA model leaves most 64 × 64 tiles without a surviving weight, which is
what exact skipping turns into speed. For each length T the run's model (``model.max_seq_len`` raised to T: RoPE is
computed on the fly and the model extrapolates) reads held-out text, windows of T tokens stacked to at least
``--tokens`` per call (repeated when the held-out split has fewer), so that the GPU and not the host is timed; each
layer's q and k (both views, after RoPE) and v are captured through its attention module's ``project()`` (as
analysis/probe.py does) in bf16, and the layer's attention is timed on the kernels, forward and forward+backward
(CUDA events, triton.testing.do_bench), with exact skipping on and off, and with skipping on also replayed from a
CUDA graph ("graphed": the GPU's time alone) beside the host's cost of issuing one eager forward+backward ("host µs").
A trained model's zeros leave so little GPU work that an eager call's issue can take as long as its kernels
(BENCHMARKS.md: 1.2-1.6 ms of host time per layer at 8k on an H100): the eager columns then time the host, and the
graphed ones the GPU alone (softmax's too: cuDNN is replayed the same way). Beside them, causal softmax through torch SDPA
forced to cuDNN and to FlashAttention-2 on the parameter-matched shapes: the run's n_head heads of d (TDA's paired
layout has n_head/2 heads with v of 2d: the same FLOPs), random inputs (softmax's time does not depend on them, and
every one of its tiles is occupied), timed once per T and counted once per layer. "tiles" is each layer's share of
causal 64 × 64 tiles holding a surviving weight, from its forward's own record.

``--train-first OVERRIDES`` trains the run first, ``python train.py OVERRIDES name=<name> runs_root=<parent>`` in a
process of its own (TDA is the default attention), unless the run directory exists already.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from benchmarks.runs import train_run

VARIANTS = ("tda", "tra")


@dataclass
class Captured:
    """One layer's attention inputs: q and k per view (B, H, T, d) after RoPE, v (B, H, T, dv), as the model lays them
    out, and the layer's λ (TDA; (H,) or (1,)), β and p."""

    layer: int
    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: torch.Tensor
    lam: Optional[torch.Tensor]
    beta: Union[float, torch.Tensor]
    p: float


def load(run_dir: Path, longest: int, device: torch.device) -> tuple[torch.nn.Module, object]:
    """The run's model (eval mode, on ``device``) accepting ``longest`` tokens, and its config."""
    from model.checkpoint import load_run

    model, cfg, _ = load_run(run_dir, device)
    if cfg.attention.name not in VARIANTS:
        raise ValueError(f"{run_dir} is a '{cfg.attention.name}' run: --from-run times the threshold kernels, "
                         f"on runs of {' or '.join(VARIANTS)}")
    model.max_seq_len = max(model.max_seq_len, longest)
    return model, cfg


def held_out_tokens(run_cfg, T: int, tokens: int) -> torch.Tensor:
    """At least ``tokens`` tokens of held-out text as (B, T) windows, B = ceil(tokens / T); windows repeat when the
    held-out split has fewer."""
    from analysis.attention import held_out

    count = -(-tokens // T)
    idx = held_out(run_cfg, T, count)
    if idx.shape[0] == 0:
        raise ValueError(f"the held-out split has no window of {T} tokens")
    return idx.repeat(-(-count // idx.shape[0]), 1)[:count]


@torch.no_grad()
def capture(model: torch.nn.Module, idx: torch.Tensor, dtype: torch.dtype) -> list[Captured]:
    """Every layer's attention inputs for tokens ``idx`` (B, T), the model run under autocast to ``dtype`` on a GPU."""
    from analysis.probe import layers

    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype) if device.type == "cuda" else contextlib.nullcontext()
    out = []
    with autocast:
        for probe in layers(model, idx.to(device)):
            attn, proj = probe.attn, probe.proj
            beta = attn.beta()
            out.append(Captured(layer=probe.layer, q=[t.to(dtype) for t in proj.q], k=[t.to(dtype) for t in proj.k],
                                v=proj.v.to(dtype), lam=attn.lam().detach().float() if probe.views == 2 else None,
                                beta=beta.detach().float() if isinstance(beta, torch.Tensor) else beta,
                                p=float(attn.options["p"])))
    return out


def time_layer(c: Captured, rep_ms: int) -> dict:
    """Forward and forward+backward ms of one layer with exact skipping on (fwd, fwd_bwd) and off (fwd_off,
    fwd_bwd_off), and its tile occupancy."""
    from benchmarks.timing import measure
    from kernels.threshold.autograd import threshold_attention_triton
    from kernels.threshold.options import ThresholdOptions

    tensors = [t.detach().requires_grad_() for t in (c.q[0], c.k[0], c.v, *c.q[1:], *c.k[1:])]
    lam = c.lam.clone().requires_grad_() if c.lam is not None else None
    grads = tensors + ([lam] if lam is not None else [])
    options = ThresholdOptions(p=c.p)

    def call(skip: bool):
        return lambda: threshold_attention_triton(*tensors, lam=lam, beta=c.beta, options=options, skip_empty=skip)

    on, off = measure(call(True), grads, rep_ms, graphs=True), measure(call(False), grads, rep_ms, host=False)
    return dict(fwd=on["fwd"], fwd_bwd=on["fwd_bwd"], fwd_off=off["fwd"], fwd_bwd_off=off["fwd_bwd"],
                host_us=on["host_us"], fwd_graph=on["fwd_graph"], fwd_bwd_graph=on["fwd_bwd_graph"],
                occupancy=occupancy(c))


def occupancy(c: Captured) -> float:
    """The layer's share of causal 64 × 64 tiles holding a surviving weight, from the record of one forward."""
    from benchmarks.timing import tile_occupancy
    from kernels.threshold import launch
    from kernels.threshold.options import ThresholdOptions
    from kernels.inputs import as_head_vector

    q1, k1 = c.q[0], c.k[0]
    H, device = q1.shape[1], q1.device
    two = c.lam is not None
    *_, rec = launch.forward(q1, k1, c.v, c.q[1] if two else None, c.k[1] if two else None,
                             as_head_vector(c.lam, H, device) if two else None, as_head_vector(c.beta, H, device),
                             ThresholdOptions(p=c.p), record=True)
    return tile_occupancy(rec, q1.shape[2], k1.shape[2])


def _pair(times: Optional[dict], graphed: bool = False) -> str:
    """"fwd / fwd+bwd" ms of a row's times (eager, or ``graphed``: replayed from a CUDA graph), "–" where not timed."""
    keys = ("fwd_graph", "fwd_bwd_graph") if graphed else ("fwd", "fwd_bwd")
    if not times or any(k not in times for k in keys):
        return "–"
    return f"{times[keys[0]]:.3f} / {times[keys[1]]:.3f}"


def _ratio(num: Optional[float], den: Optional[float]) -> str:
    return f"{num / den:.2f}" if num is not None and den else "–"


def format_rows(rows: list[dict]) -> str:
    """The table: one row per (T, layer) and per T their sum (Σ), TDA with skipping and without beside cuDNN's and
    FlashAttention-2's softmax (per layer; Σ: times the layers); eager calls timed with CUDA events, then (where
    timed) the host µs of issuing TDA's forward+backward and both TDA and cuDNN replayed from CUDA graphs."""
    lines = ["| T | B | layer | tiles | fwd ms | fwd ms, no skip | fwd+bwd ms | fwd+bwd ms, no skip "
             "| cuDNN fwd / fwd+bwd | FA2 fwd / fwd+bwd | fwd+bwd ÷ cuDNN | no skip ÷ cuDNN | host µs "
             "| graphed fwd / fwd+bwd | cuDNN graphed | graphed ÷ cuDNN graphed |", "|" + "---|" * 16]
    for r in rows:
        cudnn, flash = r.get("cudnn"), r.get("flash")
        ratio = [_ratio(r[k], cudnn["fwd_bwd"] if cudnn else None) for k in ("fwd_bwd", "fwd_bwd_off")]
        graphed = _ratio(r.get("fwd_bwd_graph"), cudnn.get("fwd_bwd_graph") if cudnn else None)
        host_us = r.get("host_us")
        host = f"{host_us:.0f}" if host_us is not None and math.isfinite(host_us) else "–"
        lines.append(f"| {r['T']} | {r['B']} | {r['layer']} | {100 * r['occupancy']:.1f}% | {r['fwd']:.3f} "
                     f"| {r['fwd_off']:.3f} | {r['fwd_bwd']:.3f} | {r['fwd_bwd_off']:.3f} | {_pair(cudnn)} "
                     f"| {_pair(flash)} | {ratio[0]} | {ratio[1]} | {host} | {_pair(r, True)} | {_pair(cudnn, True)} "
                     f"| {graphed} |")
    return "\n".join(lines)


def _summed(rows: list[dict]) -> dict:
    """The Σ row of one T: times summed over the layers, occupancy their mean, softmax once per layer."""
    n = len(rows)
    out = dict(T=rows[0]["T"], B=rows[0]["B"], layer="Σ", occupancy=sum(r["occupancy"] for r in rows) / n)
    for key in ("fwd", "fwd_off", "fwd_bwd", "fwd_bwd_off", "host_us", "fwd_graph", "fwd_bwd_graph"):
        if all(key in r for r in rows):
            out[key] = sum(r[key] for r in rows)
    for key in ("cudnn", "flash"):
        s = rows[0].get(key)
        out[key] = {k: n * v for k, v in s.items() if k in ("fwd", "fwd_bwd", "fwd_graph", "fwd_bwd_graph")} if s \
            else None
    return out


def main(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """Time the run named by ``args.from_run`` (trained first with ``args.train_first``) at every ``args.seq``."""
    from benchmarks.timing import sdpa_rows

    run_dir = Path(args.from_run)
    if args.train_first:
        train_run(run_dir, shlex.split(args.train_first), reuse=True)
    device = torch.device("cuda")
    model, cfg = load(run_dir, max(args.seq), device)
    summary = []
    for T in args.seq:
        idx = held_out_tokens(cfg, T, args.tokens)
        layers = capture(model, idx, dtype)
        B, heads, _, d = layers[0].q[0].shape
        dv = layers[0].v.shape[-1]
        softmax_heads = heads * len(layers[0].q)  # TDA's paired heads are two softmax heads each
        sdpa = {r["method"]: r for r in sdpa_rows(B, T, softmax_heads, d, dtype, args.rep_ms, graphs=True)}
        rows = []
        for c in layers:
            r = dict(T=T, B=B, layer=c.layer, **time_layer(c, args.rep_ms), cudnn=sdpa.get("sdpa-cudnn"),
                     flash=sdpa.get("sdpa-flash"))
            rows.append(r)
            print(format_rows([r]).splitlines()[-1], flush=True)
        del layers, c
        torch.cuda.empty_cache()
        rows.append(_summed(rows))
        summary.append(rows[-1])
        print(f"\n{cfg.attention.name} {run_dir.name}, T = {T}, B = {B}, {heads} heads × {d} (v {dv}); "
              f"softmax {softmax_heads} heads × {d}\n" + format_rows(rows), flush=True)
    print("\n" + format_rows(summary))
