"""Attention metrics of a trained run on held-out text: python -m analysis.attention run_dir=runs/<name>

For every probe length (256, 512, … up to the longest the model takes, or ``lengths=[...]``) it
recomputes each layer's exact attention weights on ``sequences`` held-out windows (analysis.probe) and
measures exact-zero sparsity, empty rows, the first-token sink ratio, entropy, the largest weight,
non-zeros per row and, for two-view variants, the views' correlation (of raw scores and of weights)
and consensus survivors (analysis.metrics). Gu et al.'s sink rate is measured on ``sink_sequences`` windows of 64 tokens.
Writes under runs/<name>/analysis/:

    summary.json          every number above, per length (and per layer), the sink rate, λ and β per layer,
                          and the ``metrics_version`` of the definitions (analysis.metrics.METRICS_VERSION)
    sparsity.csv          length, layer, head, view, sparsity
    dispersion.csv        length, layer, and the per-layer means
    rows.csv.gz           length, layer, position, and the per-row-position means (curves against i) to six
                          significant digits; gzip'd, as it is the one large output (one line per query position
                          and layer) and studies keep it
    attention_maps.npz    the combined maps of chosen heads on the first ``map_tokens`` tokens
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from analysis.metrics import METRICS_VERSION, SINK_PROBE_TOKENS, LayerStats, sink_summary, summarise
from analysis.probe import layers, row_blocks, view_scores
from data.loader import ensure_prepared, validation_batches
from model.checkpoint import load_run

OUTPUT = "analysis"
SUMMARY = "summary.json"
MAPS = "attention_maps.npz"
ROWS = "rows.csv.gz"  # older analyses wrote it uncompressed as rows.csv (analysis.results reads either)
ROW_CURVES = ("empty_share", "first_token_ratio", "entropy", "top_weight", "nonzeros", "consensus")
LAYER_COLUMNS = ("sparsity", "empty_row_share", "first_token_ratio", "entropy", "top_weight",
                 "nonzeros_per_row", "consensus_per_row", "view_correlation", "score_correlation")


def default_lengths(max_length: int, shortest: int = 256) -> list[int]:
    """shortest, 2·shortest, … up to max_length (max_length alone when it is below shortest)."""
    if max_length < shortest:
        return [max_length]
    return [shortest * 2**k for k in range(int(math.log2(max_length / shortest)) + 1)]


def held_out(run_cfg: DictConfig, length: int, count: int) -> torch.Tensor:
    """Up to ``count`` validation windows of ``length`` tokens (the fixed held-out set), (n, length)."""
    batches = validation_batches(ensure_prepared(run_cfg.data), 1, length, count,
                                 bos_aligned=bool(run_cfg.data.get("bos_aligned", False)))
    return torch.cat([x for x, _ in batches])


def measure(model: torch.nn.Module, idx: torch.Tensor, max_bytes: int) -> list[LayerStats]:
    """Every layer's stats for tokens idx (B, T), weights recomputed in row blocks of ≤ max_bytes."""
    out = []
    for probe in layers(model, idx):
        stats = LayerStats(idx.shape[1], probe.heads, probe.views, device=idx.device)
        for start, stop, maps in row_blocks(probe, max_bytes):
            stats.add(start, stop, maps)
            if probe.views == 2:
                stats.add_scores(start, stop, view_scores(probe, start, stop))
        stats.end_batch()
        out.append(stats)
    return out


def saved_maps(model: torch.nn.Module, idx: torch.Tensor, heads: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Combined maps of (layer, head) pairs on tokens idx (1, T): {"L<layer>H<head>": (T, T) array}."""
    wanted = {}
    for layer, head in heads:
        wanted.setdefault(int(layer), []).append(int(head))
    out = {}
    for probe in layers(model, idx):
        for head in wanted.get(probe.layer, []):
            if not 0 <= head < probe.heads:
                raise ValueError(f"map_heads: layer {probe.layer} has {probe.heads} heads, got head {head}")
            out[f"L{probe.layer}H{head}"] = probe.attn.maps(probe.proj)["combined"][0, head].cpu().numpy()
    missing = set(wanted) - {int(k[1:k.index("H")]) for k in out}
    if missing:
        raise ValueError(f"map_heads: the model has {len(model.blocks)} layers, got layer(s) {sorted(missing)}")
    return out


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV file; gzip'd (with no timestamp in the header, so equal rows give equal bytes) when path ends .gz."""
    with open(path, "wb") as raw:
        binary = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.suffix == ".gz" else raw
        with io.TextIOWrapper(binary, encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def analyse(cfg: DictConfig) -> Path:
    """Run the analysis that ``cfg`` (conf/analysis.yaml) describes; returns the output directory."""
    device = _device(cfg.device)
    torch.set_float32_matmul_precision("highest")   # no TF32: exact zeros depend on scores near τ
    model, run_cfg, step = load_run(cfg.run_dir, device, cfg.checkpoint)
    max_length = int(cfg.max_length or model.max_seq_len)
    if max_length > model.max_seq_len:
        raise ValueError(f"max_length={max_length} exceeds the model's max_seq_len={model.max_seq_len}")
    lengths = [int(t) for t in cfg.lengths] if cfg.lengths else default_lengths(max_length)
    too_long = [t for t in lengths if not 1 <= t <= model.max_seq_len]
    if too_long:
        raise ValueError(f"lengths {too_long} are beyond the model (1 … max_seq_len={model.max_seq_len})")
    max_bytes = int(cfg.memory_mb * 2**20)
    out_dir = Path(cfg.run_dir) / OUTPUT
    out_dir.mkdir(exist_ok=True)

    summaries, sparsity_rows, layer_rows, curve_rows = [], [], [], []
    for length in lengths:
        try:
            idx = held_out(run_cfg, length, int(cfg.sequences)).to(device)
        except ValueError as exc:
            print(f"skipping length {length}: {exc}", flush=True)
            continue
        began = time.perf_counter()
        stats = measure(model, idx, max_bytes)
        summary = summarise(stats)
        summary["sequences"] = idx.shape[0]
        summaries.append(summary)
        for layer, s in enumerate(stats):
            for view, zeros in s.zeros.items():
                for head, value in enumerate((zeros / s.entries).tolist()):
                    sparsity_rows.append([length, layer, head, view, value])
            layer_rows.append([length, layer] + [summary.get(f"{c}_per_layer", [None] * len(stats))[layer]
                                                 for c in LAYER_COLUMNS])
            curves = {k: v.cpu().tolist() for k, v in s.row_curves().items()}
            for i in range(length):
                curve_rows.append([length, layer, i] + [curves[k][i] if k in curves else None for k in ROW_CURVES])
        print(f"length {length}: {idx.shape[0]} sequences, sparsity {summary['sparsity']:.4f}, first-token ratio "
              f"{summary['first_token_ratio']:.4f} (uniform {summary['first_token_ratio_uniform']:.4f}), "
              f"non-zeros/row {summary['nonzeros_per_row']:.2f} [{time.perf_counter() - began:.1f}s]", flush=True)
    if not summaries:
        raise ValueError(f"the held-out split of {cfg.run_dir} has no window of any probe length {lengths}")

    sink_len = min(SINK_PROBE_TOKENS, model.max_seq_len)
    sink_idx = held_out(run_cfg, sink_len, int(cfg.sink_sequences)).to(device)
    sink = sink_summary(measure(model, sink_idx, max_bytes))
    sink.update(length=sink_len, sequences=sink_idx.shape[0])
    print(f"sink rate (ε={sink['epsilon']}, {sink['triples']} triples of {sink_len} tokens): {sink['sink_rate']:.4f}; "
          f"empty rows {sink['empty_row_share']:.4f}; over non-empty rows only (diagnostic): "
          f"{sink['sink_rate_nonempty_rows']:.4f}", flush=True)

    map_len = min(int(cfg.map_tokens), model.max_seq_len)
    heads = cfg.map_heads if cfg.map_heads is not None else [[layer, 0] for layer in range(len(model.blocks))]
    np.savez_compressed(out_dir / MAPS, **saved_maps(model, held_out(run_cfg, map_len, 1)[:1].to(device), heads))

    result = {"metrics_version": METRICS_VERSION, "run": Path(cfg.run_dir).name, "step": step, "attention": run_cfg.attention.name,
              "seq_len": int(run_cfg.model.seq_len), "max_seq_len": model.max_seq_len, "lengths": summaries,
              "sink": sink, **model.attention_scalars()}
    (out_dir / SUMMARY).write_text(json.dumps(result, indent=1, allow_nan=True))
    _write_csv(out_dir / "sparsity.csv", ["length", "layer", "head", "view", "sparsity"], sparsity_rows)
    _write_csv(out_dir / "dispersion.csv", ["length", "layer", *LAYER_COLUMNS], layer_rows)
    _write_csv(out_dir / ROWS, ["length", "layer", "position", *ROW_CURVES], [significant(row) for row in curve_rows])
    return out_dir


def significant(row: list, digits: int = 6) -> list:
    """A rows.csv line as kept: integers and blanks (None) as they are, floats to ``digits`` significant digits
    (means over a few probe sequences, whose spread is far wider than the rounding; the summaries are computed
    unrounded)."""
    return [x if x is None or isinstance(x, int) else float(f"{x:.{digits}g}") for x in row]


@hydra.main(config_path="../conf", config_name="analysis", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        out_dir = analyse(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"analysis in {out_dir}")


if __name__ == "__main__":
    main()
