"""Figures of the attention analysis (python -m analysis.attention's summaries and maps): zeros, the first-token
ratio and sink rate by layer, dispersion against length, maps, λ by layer, and the survivors' bound on random
vectors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from analysis.attention import MAPS, OUTPUT
from analysis.draw.common import legend, length_axis, lengths_title, mean_over_layers, run_label, run_styles, save
from analysis.metrics import random_survivors, survivor_bound
from analysis.results import RunResults
from evaluation.plots import pyplot


def sparsity_by_layer(runs: list[RunResults], stem: Path, length: int | None = None) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    styles, shown = run_styles(runs), set()
    for run in runs:
        s = run.length_summary(length)
        shown.add(s["length"])
        ax.plot(range(len(s["sparsity_per_layer"])), [100 * v for v in s["sparsity_per_layer"]], marker="o",
                **styles[run.name])
    ax.set(xlabel="layer", ylabel="exact zeros (% of causal entries)", title=lengths_title(shown))
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    legend(ax)
    return save(fig, stem)


def first_token_ratio(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = pyplot()
    fig, (by_row, by_length) = plt.subplots(1, 2, figsize=(11, 3.6))
    styles, shown = run_styles(runs), set()
    missing = []
    for run in runs:
        length = max(s["length"] for s in run.summary["lengths"])
        shown.add(length)
        try:
            ratio = mean_over_layers(run.row_curves(length)["first_token_ratio"])
            by_row.plot(np.arange(1, length + 1), ratio, lw=0.6, alpha=0.8, **styles[run.name])
        except FileNotFoundError:  # rows.csv.gz not kept (results copied without it)
            missing.append(run.name)
        lengths = [s["length"] for s in run.summary["lengths"]]
        by_length.plot(lengths, [s["first_token_ratio"] for s in run.summary["lengths"]], marker="o",
                       **styles[run.name])
    positions = np.arange(1, max(shown) + 1)
    by_row.plot(positions, 1.0 / positions, "k--", lw=1, label="uniform: 1/(i+1) left, H_T / T right")
    by_row.set(xscale="log", yscale="log", xlabel="row position i + 1", ylabel="first-token ratio r_i",
               title=lengths_title(shown) + " (mean over layers)")
    all_lengths = sorted({s["length"] for run in runs for s in run.summary["lengths"]})
    by_length.plot(all_lengths, [sum(1 / k for k in range(1, t + 1)) / t for t in all_lengths], "k--",
                   label="_nolegend_")
    length_axis(by_length, all_lengths)
    by_length.set(yscale="log", xlabel="context length T", ylabel="mean first-token ratio")
    if missing:
        by_row.text(0.02, 0.02, f"no {OUTPUT}/rows.csv.gz: {len(missing)} run(s) not drawn", fontsize=7,
                    transform=by_row.transAxes)
    for ax in (by_row, by_length):
        ax.grid(alpha=0.3, which="both")
    legend(by_row, by_length)
    return save(fig, stem)


def sink_by_layer(runs: list[RunResults], stem: Path, length: int | None = None) -> list[Path]:
    """Per layer: the first-token ratio over its uniform value H_T / T (at the probe length nearest the
    training length), Gu et al.'s sink rate, and the share of the sink probes' rows with no non-zero weight (which
    count 0 in the rate: a rate near 0 where most rows are empty says attention is off, not that it avoids token 0);
    where a sink sits, and in which runs."""
    plt = pyplot()
    fig, (ratio_ax, rate_ax, empty_ax) = plt.subplots(1, 3, figsize=(15, 3.6))
    styles, shown, probes = run_styles(runs), set(), set()
    for run in runs:
        s = run.length_summary(length)
        shown.add(s["length"])
        ratio = np.array(s["first_token_ratio_per_layer"], dtype=float) / s["first_token_ratio_uniform"]
        with np.errstate(divide="ignore"):  # a layer with no weight on token 0 sits at the bottom
            ratio_ax.plot(range(len(ratio)), np.maximum(ratio, 1e-3), marker="o", **styles[run.name])
        sink = run.summary.get("sink") or {}
        if sink.get("sink_rate_per_layer"):
            probes.add((sink.get("length"), sink.get("epsilon")))
            rates = np.array(sink["sink_rate_per_layer"], dtype=float)
            rate_ax.plot(range(len(rates)), rates, marker="o", **styles[run.name])
        if sink.get("empty_row_share_per_layer"):
            empty = np.array(sink["empty_row_share_per_layer"], dtype=float)
            empty_ax.plot(range(len(empty)), empty, marker="o", **styles[run.name])
    ratio_ax.axhline(1.0, color="k", ls="--", lw=1, label="uniform (ratio 1)")
    ratio_ax.set(yscale="log", xlabel="layer", ylabel="first-token ratio ÷ uniform H_T / T",
                 title=lengths_title(shown) + " (0 drawn at 10⁻³)")
    rate_ax.set(xlabel="layer", ylabel="sink rate (share with α₀ > ε)", ylim=(-0.03, 1.03),
                title=", ".join(f"{t} tokens, ε = {e}" for t, e in sorted(probes, key=str)))
    empty_ax.set(xlabel="layer", ylabel="share of the probes' rows with no weight", ylim=(-0.03, 1.03),
                 title="empty rows (counting 0 in the rate)")
    for ax in (ratio_ax, rate_ax, empty_ax):
        ax.grid(alpha=0.3, which="both")
    legend(ratio_ax, empty_ax)
    return save(fig, stem)


def dispersion(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = pyplot()
    panels = (("nonzeros_per_row", "non-zero weights per row"), ("entropy", "row entropy (nats)"),
              ("top_weight", "largest normalised weight"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    all_lengths = sorted({s["length"] for run in runs for s in run.summary["lengths"]})
    styles = run_styles(runs)
    for run in runs:
        lengths = [s["length"] for s in run.summary["lengths"]]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(lengths, [s[key] for s in run.summary["lengths"]], marker="o", **styles[run.name])
    for ax, (key, title) in zip(axes, panels):
        length_axis(ax, all_lengths)
        ax.set(xlabel="context length T", ylabel=title)
        if key == "nonzeros_per_row":
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both")
    legend(axes[-1])
    return save(fig, stem)


def attention_maps(run: RunResults, stem: Path) -> list[Path]:
    plt = pyplot()
    with np.load(run.path / OUTPUT / MAPS) as data:
        maps = {key: data[key] for key in data.files}
    if not maps:
        raise ValueError(f"{run.path / OUTPUT / MAPS} holds no maps (map_heads was empty)")
    cols = min(4, len(maps))
    rows = math.ceil(len(maps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    signed = any(bool((w < 0).any()) for w in maps.values())
    for ax, (key, w) in zip(axes.flat, sorted(maps.items())):
        bound = float(np.abs(w).max()) or 1.0
        image = ax.imshow(w, cmap="RdBu_r" if signed else "viridis", vmin=-bound if signed else 0, vmax=bound)
        zeros = float((w[np.tril(np.ones(w.shape, dtype=bool))] == 0).mean())
        ax.set_title(f"layer {key[1:key.index('H')]}, head {key[key.index('H') + 1:]}: {100 * zeros:.0f}% zeros",
                     fontsize=8)
        ax.set(xlabel="key j", ylabel="query i")
        fig.colorbar(image, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    fig.suptitle(run_label(run), fontsize=9)
    return save(fig, stem)


def lambda_by_layer(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    shown, styles = 0, run_styles(runs)
    for run in runs:
        values = run.summary.get("lambda_per_layer")
        if values:
            ax.plot(range(len(values)), [float(np.mean(v)) for v in values], marker="o", **styles[run.name])
            shown += 1
    if shown:
        legend(ax)
    else:
        ax.text(0.5, 0.5, "no run has a λ (TDA or differential)", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="layer", ylabel="λ (mean over heads)")
    ax.grid(alpha=0.3)
    return save(fig, stem)


def theory_check(stem: Path, head_dim: int, betas: list[float], max_position: int, trials: int,
                 seed: int) -> list[Path]:
    plt = pyplot()
    positions = sorted({int(round(x)) - 1 for x in np.geomspace(1, max_position, 24)})
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k, beta in enumerate(betas):
        colour = f"C{k}"
        measured = random_survivors(head_dim, positions, beta, trials, seed)
        ax.plot([i + 1 for i in positions], measured, "o", color=colour, ms=3, label=f"measured, β={beta}")
        ax.plot([i + 1 for i in positions], survivor_bound(positions, beta), "-", color=colour, lw=1,
                label=f"bound (i+1)^(1−β²), β={beta}")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.set(xscale="log", xlabel="row position i + 1",
           ylabel="survivors per row", title=f"random unit vectors, d={head_dim}, {trials} draws")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    return save(fig, stem)
