"""benchmarks.decode's stage ``kernel``: one layer's decoding attention alone, our TDA and softmax decoding kernels
against torch's SDPA backends on random inputs (``kernel_point``), and what chooses the kernels' split plan: every
page size, pages per program and pipeline depth (``sweep_plans``), each launch's device time (``launch_times``).
The options are benchmarks.decode's (``python -m benchmarks.decode --stages kernel ...``)."""
from __future__ import annotations

import json
import traceback
from typing import Callable

import torch

from benchmarks.timing import time_replays


def failure(exc: Exception) -> str:
    """A failed point's one-line reason (the traceback goes to stderr)."""
    traceback.print_exc()
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120] if lines else ''}"


def _sdpa_backends() -> dict:
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def _threshold_point(row: dict, randn: Callable[..., torch.Tensor], pairs: int, positions: torch.Tensor,
                     device: torch.device, reps: int, sweep, split: bool) -> None:
    """kernel_point's TDA entries of ``row``: µs per call, the share of value pages read, GB/s, and the sweep and
    launch times when asked, for ``pairs`` paired heads (q/k 64, v 128) against a cache of the rows' length."""
    from kernels.decode import PAGE, threshold_decode

    batch, context = row["batch"], row["context"]
    q1, q2 = randn(batch, pairs, 64), randn(batch, pairs, 64)
    k1, k2 = randn(batch, pairs, context, 64), randn(batch, pairs, context, 64)
    v = randn(batch, pairs, context, 128)

    def call(**plan):
        return threshold_decode(q1, k1, v, q2, k2, positions=positions, lam=0.5, kernel=True, **plan)

    flags = torch.zeros(batch, pairs, -(-context // PAGE), dtype=torch.int8, device=device)
    call(read_flags=flags)
    row["tda_value_pages_read"] = float((flags == 2).double().mean())
    row["tda_us"] = 1e3 * time_replays(call, device, reps)
    tda_mb = batch * pairs * context * (2 * 64 + 128 * row["tda_value_pages_read"]) * q1.element_size() / 1e6
    row["tda_gb_per_s"] = tda_mb / 1e3 / (row["tda_us"] / 1e6)
    if sweep is not None:
        row["tda_sweep"] = sweep_plans(call, device, reps, *sweep)
    if split:
        row["tda_launches"] = launch_times(call, device, reps)


def kernel_point(batch: int, context: int, device: torch.device, dtype: torch.dtype, reps: int,
                 generator: torch.Generator, sweep: tuple[list[int], list[int], list[int]] | None = None,
                 heads: int = 12, split: bool = False) -> dict:
    """µs per call of one layer's decoding attention, ``heads`` softmax heads of 64 (TDA: heads / 2 paired heads,
    q/k 64, v 128; 12: the 162M layout), every row's query at position context − 1; ``split``: also the device µs
    of each launch of our kernels (``launch_times``)."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    from kernels.decode import softmax_decode

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    row = {"batch": batch, "context": context}
    positions = torch.full((batch,), context - 1, device=device, dtype=torch.long)
    _threshold_point(row, randn, heads // 2, positions, device, reps, sweep, split)  # its cache freed on return
    q = randn(batch, heads, 64)
    k, v = randn(batch, heads, context, 64), randn(batch, heads, context, 64)
    softmax_mb = batch * heads * context * 128 * q.element_size() / 1e6
    row["softmax_us"] = 1e3 * time_replays(lambda: softmax_decode(q, k, v, positions=positions, kernel=True),
                                           device, reps)
    if sweep is not None:
        row["softmax_sweep"] = sweep_plans(lambda **plan: softmax_decode(
            q, k, v, positions=positions, kernel=True, **plan), device, reps, *sweep)
    if split:
        row["softmax_launches"] = launch_times(lambda: softmax_decode(q, k, v, positions=positions, kernel=True),
                                               device, reps)
    q4 = q[:, :, None]
    mask = (torch.arange(context, device=device) <= positions[:, None])[:, None, None]
    for backend_name, backend in _sdpa_backends().items():
        masked = backend_name == "efficient"

        def call():
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q4, k, v, attn_mask=mask if masked else None)
        try:
            row[f"sdpa_{backend_name}_us"] = 1e3 * time_replays(call, device, reps)
        except RuntimeError as exc:  # a backend that does not take these inputs on this GPU
            row[f"sdpa_{backend_name}_us"] = None
            row[f"sdpa_{backend_name}_error"] = str(exc).splitlines()[0][:160]
    candidates = {k: v for k, v in row.items() if k.endswith("_us") and k != "tda_us" and v is not None}
    best = min(candidates, key=candidates.get)
    row["best_softmax"], row["best_softmax_us"] = best[:-3], candidates[best]
    row["softmax_gb_per_s"] = softmax_mb / 1e3 / (row["best_softmax_us"] / 1e6)
    return row


def launch_times(call: Callable[[], object], device: torch.device, reps: int) -> dict[str, float]:
    """Device µs per call of each kernel ``call`` launches, by kernel name (benchmarks.profile.profile_calls over
    ``reps`` calls); {} off a GPU, where there are no device kernels to record."""
    if device.type != "cuda":
        return {}
    from benchmarks.profile import profile_calls

    return {name: us for name, us, _ in profile_calls(call, reps)}


def launch_table(rows: list[dict]) -> str:
    """Markdown: per kernel, batch and context, each launch's device µs per call and their sum."""
    lines = ["| kernel | batch | context | launch | device µs per call |", "|---|---|---|---|---|"]
    for r in rows:
        for kernel in ("tda", "softmax"):
            launches = r.get(f"{kernel}_launches")
            if launches is None:
                continue
            if not launches:
                lines.append(f"| {kernel} | {r['batch']} | {r['context']} | (no device kernels recorded) | — |")
            for name, us in sorted(launches.items(), key=lambda item: -item[1]):
                lines.append(f"| {kernel} | {r['batch']} | {r['context']} | {name} | {us:.1f} |")
            if launches:
                lines.append(f"| {kernel} | {r['batch']} | {r['context']} | all | {sum(launches.values()):.1f} |")
    return "\n".join(lines)


def sweep_plans(call: Callable[..., object], device: torch.device, reps: int, splits: list[int],
                pages: list[int], stages: list[int]) -> dict[str, float | None]:
    """µs per call of ``call(page=..., pages_per_split=..., stages=...)`` for every page size, pages per split and
    pipeline depth, keyed "page x pages x stages" (None where the launch fails, e.g. a page too large for the GPU's
    registers or shared memory)."""
    out: dict[str, float | None] = {}
    for page in pages:
        for depth in stages:
            for per in splits:
                try:
                    out[f"{page}x{per}x{depth}"] = 1e3 * time_replays(
                        lambda: call(page=page, pages_per_split=per, stages=depth), device, reps)
                except Exception:  # noqa: BLE001 (a plan the GPU cannot run is a blank cell)
                    out[f"{page}x{per}x{depth}"] = None
    return out


def sweep_table(rows: list[dict]) -> str:
    """Markdown: a line per kernel, batch, context, page size and pipeline depth; a column per pages-per-split (µs),
    the launcher's own plan first and the line's fastest cell in bold."""
    plans = next((list(r["tda_sweep"]) for r in rows if "tda_sweep" in r), [])
    if not plans:
        return ""
    keys = [tuple(int(x) for x in p.split("x")) for p in plans]
    splits = sorted({k[1] for k in keys})
    lines = ["| kernel | batch | context | page | stages | launcher's plan µs | "
             + " | ".join(f"{n}/split" for n in splits) + " |", "|---" * (6 + len(splits)) + "|"]
    for r in rows:
        for kernel in ("tda", "softmax"):
            sweep = r.get(f"{kernel}_sweep")
            if sweep is None:
                continue
            timed = [v for v in sweep.values() if v is not None]
            best = min(timed) if timed else None
            for page in sorted({k[0] for k in keys}):
                for depth in sorted({k[2] for k in keys}):
                    cells = []
                    for n in splits:
                        value = sweep.get(f"{page}x{n}x{depth}")
                        cells.append("n/a" if value is None else
                                     f"**{value:.1f}**" if value == best else f"{value:.1f}")
                    lines.append(f"| {kernel} | {r['batch']} | {r['context']} | {page} | {depth} | "
                                 f"{r[f'{kernel}_us']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernels_alone(args, device: torch.device, dtype: torch.dtype, rows: list[dict]) -> None:
    """Measure the kernels alone at every batch and context, appending each row to ``rows`` as it is done."""
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for batch in args.kernel_batches:
        for context in args.kernel_contexts:
            try:
                row = kernel_point(batch, context, device, dtype, args.reps, generator,
                                   (args.sweep_splits, args.sweep_pages, args.sweep_stages) if args.sweep
                                   else None, heads=args.kernel_heads, split=args.kernel_split)
            except Exception as exc:  # a failed point is a row of the table; the others still run
                row = {"batch": batch, "context": context, "error": failure(exc)}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)


def kernel_table(rows: list[dict]) -> str:
    def us(value) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    lines = ["| batch | context | TDA µs | TDA value pages read | TDA GB/s | softmax (ours) µs | SDPA flash µs | "
             "SDPA cuDNN µs | SDPA efficient (mask) µs | best softmax | its GB/s | TDA / best softmax |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['context']} | {r['error']} | | | | | | | | | |")
            continue
        lines.append(f"| {r['batch']} | {r['context']} | {us(r['tda_us'])} | {r['tda_value_pages_read']:.1%} | "
                     f"{r['tda_gb_per_s']:.0f} | {us(r['softmax_us'])} | {us(r.get('sdpa_flash_us'))} | "
                     f"{us(r.get('sdpa_cudnn_us'))} | {us(r.get('sdpa_efficient_us'))} | {r['best_softmax']} | "
                     f"{r['softmax_gb_per_s']:.0f} | {r['tda_us'] / r['best_softmax_us']:.2f} |")
    return "\n".join(lines)
