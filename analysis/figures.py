"""The paper's figures across analysed runs: python -m analysis.figures runs=[runs/a,runs/b] out=results/figures

Each run needs the output of ``python -m analysis.attention`` (of this code's metrics version, see
analysis.results) unless only figures drawn from metrics.jsonl are asked for (``figures=[...]``:
loss_curves, loss_by_configuration, length_extrapolation, size_trend, training_diagnostics, theory_check). Runs of
one variant (configs equal up to the seed) share a colour and one legend entry. Every figure is written as PNG and
PDF under ``out``:

    sparsity_by_layer     exact-zero share of causal entries per layer, one line per run
    first_token_ratio     r_i = |w_i0| / Σ_j |w_ij| against row position i at the longest probe length
                          (mean over layers) with the uniform reference 1/(i+1); and its row mean against
                          length with the uniform H_T / T
    sink_by_layer         per layer: first-token ratio over its uniform value, and Gu et al.'s sink rate
    dispersion            non-zeros per row, row entropy and largest normalised weight against length
    attention_maps_<run>  the saved combined maps of chosen heads (first tokens of a held-out window)
    lambda_by_layer       λ of every layer (TDA, differential) at the analysed checkpoint
    loss_curves           training and validation loss against step
    loss_by_configuration final validation loss per configuration (runs equal up to the seed): seeds as dots,
                          the mean as a bar, softmax's mean as a line, the difference from it in percent
    length_extrapolation  perplexity against evaluated length per configuration, plain RoPE and NTK-aware scaling
                          (from eval/length_extrapolation.json; drawn when some run has it)
    loss_vs_empty_rows    final validation loss against the share of empty rows (rows with no non-zero weight, at
                          the training length), one point per configuration (mean over seeds, seeds as small
                          dots), softmax's mean as a line: does switching attention off cost loss?
    size_trend            final validation loss against the model's parameters, one line per configuration run at
                          two or more sizes (model.n_layer × n_embd; the head count follows the width), at the
                          tokens the runs trained on (fixed tokens: a larger model is not trained longer); drawn
                          when some configuration has two sizes
    training_diagnostics_<run>  per layer against step, from the diag/* metrics logged while training
                          (analysis.diagnostics): empty-row share, non-zeros per row, tile occupancy; and
                          λ and β (lambda/<layer>, beta/<layer>); for each run that logged diag/* metrics
    theory_check          survivors per row of random unit vectors against the bound (i+1)^(1−β²)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NamedTuple

import hydra
import numpy as np
from omegaconf import DictConfig

from analysis.attention import MAPS, OUTPUT
from analysis.diagnostics import MEASURES, PREFIX
from analysis.metrics import TILE, random_survivors, survivor_bound
from analysis.results import (Group, RunResults, check_metrics_versions, families, group_runs, load_results,
                              run_list)
from evaluation import plots
from evaluation.plots import pyplot as _pyplot


def save(fig, stem: Path) -> list[Path]:
    """Write ``fig`` as stem.png and stem.pdf (evaluation.plots.save), the legends that sit outside the axes
    included; close it, return both paths."""
    return plots.save(fig, stem, legends_outside=True)


def _label(run: RunResults) -> str:
    return f"{run.name} ({run.attention})"


LINE_STYLES = ("-", "--", ":", "-.")


def run_styles(runs: list[RunResults]) -> dict[str, dict]:
    """Plot keywords of each run: one colour per variant (analysis.results.group_runs) and, past the ten colours
    of the cycle, a line style per ten variants, so no two variants of one figure look alike; the legend label on
    the variant's first run only (with the number of seeds when there are several)."""
    styles = {}
    for k, group in enumerate(group_runs(runs)):
        label = group.label if len(group.runs) == 1 else f"{group.label} ({len(group.runs)} seeds)"
        for i, run in enumerate(group.runs):
            styles[run.name] = dict(color=f"C{k % 10}", linestyle=LINE_STYLES[k // 10 % len(LINE_STYLES)],
                                    label=label if i == 0 else "_nolegend_")
    return styles


def _legend(*axes) -> None:
    """One legend of the labelled lines of ``axes`` (each label once), right of the last, hiding no data."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        axes[-1].legend(list(entries.values()), list(entries), fontsize=7, loc="upper left",
                        bbox_to_anchor=(1.02, 1.0), frameon=False)


def _lengths_title(lengths: set[int]) -> str:
    return "T = " + ", ".join(str(t) for t in sorted(lengths))


def sparsity_by_layer(runs: list[RunResults], stem: Path, length: int | None = None) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    styles, shown = run_styles(runs), set()
    for run in runs:
        s = run.length_summary(length)
        shown.add(s["length"])
        ax.plot(range(len(s["sparsity_per_layer"])), [100 * v for v in s["sparsity_per_layer"]], marker="o",
                **styles[run.name])
    ax.set(xlabel="layer", ylabel="exact zeros (% of causal entries)", title=_lengths_title(shown))
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    _legend(ax)
    return save(fig, stem)


def _length_axis(ax, lengths: list[int]) -> None:
    """Log-2 x axis labelled at the probe lengths."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(t) for t in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _mean_over_layers(per_layer: list[list[float]]) -> np.ndarray:
    values = np.array(per_layer, dtype=float)
    with np.errstate(all="ignore"):
        counts = (~np.isnan(values)).sum(0)
        return np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), np.nan)


def first_token_ratio(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = _pyplot()
    fig, (by_row, by_length) = plt.subplots(1, 2, figsize=(11, 3.6))
    styles, shown = run_styles(runs), set()
    missing = []
    for run in runs:
        length = max(s["length"] for s in run.summary["lengths"])
        shown.add(length)
        try:
            ratio = _mean_over_layers(run.row_curves(length)["first_token_ratio"])
            by_row.plot(np.arange(1, length + 1), ratio, lw=0.6, alpha=0.8, **styles[run.name])
        except FileNotFoundError:  # rows.csv.gz not kept (results copied without it)
            missing.append(run.name)
        lengths = [s["length"] for s in run.summary["lengths"]]
        by_length.plot(lengths, [s["first_token_ratio"] for s in run.summary["lengths"]], marker="o",
                       **styles[run.name])
    positions = np.arange(1, max(shown) + 1)
    by_row.plot(positions, 1.0 / positions, "k--", lw=1, label="uniform: 1/(i+1) left, H_T / T right")
    by_row.set(xscale="log", yscale="log", xlabel="row position i + 1", ylabel="first-token ratio r_i",
               title=_lengths_title(shown) + " (mean over layers)")
    all_lengths = sorted({s["length"] for run in runs for s in run.summary["lengths"]})
    by_length.plot(all_lengths, [sum(1 / k for k in range(1, t + 1)) / t for t in all_lengths], "k--",
                   label="_nolegend_")
    _length_axis(by_length, all_lengths)
    by_length.set(yscale="log", xlabel="context length T", ylabel="mean first-token ratio")
    if missing:
        by_row.text(0.02, 0.02, f"no {OUTPUT}/rows.csv.gz: {len(missing)} run(s) not drawn", fontsize=7,
                    transform=by_row.transAxes)
    for ax in (by_row, by_length):
        ax.grid(alpha=0.3, which="both")
    _legend(by_row, by_length)
    return save(fig, stem)


def sink_by_layer(runs: list[RunResults], stem: Path, length: int | None = None) -> list[Path]:
    """Per layer: the first-token ratio over its uniform value H_T / T (at the probe length nearest the
    training length), and Gu et al.'s sink rate; where a sink sits, and in which runs."""
    plt = _pyplot()
    fig, (ratio_ax, rate_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
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
    ratio_ax.axhline(1.0, color="k", ls="--", lw=1, label="uniform (ratio 1)")
    ratio_ax.set(yscale="log", xlabel="layer", ylabel="first-token ratio ÷ uniform H_T / T",
                 title=_lengths_title(shown) + " (0 drawn at 10⁻³)")
    rate_ax.set(xlabel="layer", ylabel="sink rate (share with α₀ > ε)", ylim=(-0.03, 1.03),
                title=", ".join(f"{t} tokens, ε = {e}" for t, e in sorted(probes, key=str)))
    for ax in (ratio_ax, rate_ax):
        ax.grid(alpha=0.3, which="both")
    _legend(ratio_ax, rate_ax)
    return save(fig, stem)


def dispersion(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = _pyplot()
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
        _length_axis(ax, all_lengths)
        ax.set(xlabel="context length T", ylabel=title)
        if key == "nonzeros_per_row":
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both")
    _legend(axes[-1])
    return save(fig, stem)


def attention_maps(run: RunResults, stem: Path) -> list[Path]:
    plt = _pyplot()
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
    fig.suptitle(_label(run), fontsize=9)
    return save(fig, stem)


def lambda_by_layer(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    shown, styles = 0, run_styles(runs)
    for run in runs:
        values = run.summary.get("lambda_per_layer")
        if values:
            ax.plot(range(len(values)), [float(np.mean(v)) for v in values], marker="o", **styles[run.name])
            shown += 1
    if shown:
        _legend(ax)
    else:
        ax.text(0.5, 0.5, "no run has a λ (TDA or differential)", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="layer", ylabel="λ (mean over heads)")
    ax.grid(alpha=0.3)
    return save(fig, stem)


def loss_curves(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = _pyplot()
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    styles = run_styles(runs)
    for run in runs:
        for ax, key in ((train_ax, "loss"), (val_ax, "val_loss")):
            points = [(r["step"], r[key]) for r in run.metrics if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, lw=0.8, **styles[run.name])
    for ax, title in ((train_ax, "training loss"), (val_ax, "validation loss")):
        ax.set(xlabel="step", ylabel=f"{title} (nats)")
        ax.grid(alpha=0.3)
    _legend(val_ax if val_ax.get_legend_handles_labels()[0] else train_ax)
    return save(fig, stem)


def configuration_losses(runs: list[RunResults]) -> tuple[list[tuple[str, list[float], str, float | None]],
                                                         list[float]]:
    """(rows, reference) of loss_by_configuration: rows (label, the seeds' final validation losses, attention, the
    mean loss of softmax of the same model size and data, analysis.report.softmax_for, or None) with the highest
    mean first, so the best is drawn at the top; reference: [the mean of softmax as the studies run it]
    (analysis.report.reference_group) or [] without it."""
    from analysis.report import reference_group, softmax_for

    groups = group_runs(runs)
    losses = {g.label: [v for v in (r.final_val_loss() for r in g.runs) if v is not None] for g in groups}
    groups = [g for g in groups if losses[g.label]]
    if not groups:
        raise ValueError("loss_by_configuration: no run has a validation loss (eval/val_loss.json or val_loss "
                         "in metrics.jsonl)")

    def mean_of(group: Group | None) -> float | None:
        return float(np.mean(losses[group.label])) if group is not None else None

    rows = [(g.label, losses[g.label], g.attention, mean_of(softmax_for(groups, g))) for g in groups]
    rows.sort(key=lambda row: -float(np.mean(row[1])))
    ref = reference_group(groups)
    return rows, [mean_of(ref)] if ref is not None else []


def loss_by_configuration(runs: list[RunResults], stem: Path) -> list[Path]:
    """Final validation loss per configuration (runs equal up to the seed, labelled as analysis.report's loss
    table labels them): each seed a dot, the mean a bar end, the reference softmax's mean a dashed line, and the
    mean's difference in percent from softmax's of the same model size and data (none where there is no such run),
    best configuration at the top. Where that softmax is not the reference (another model size), a short tick on
    the configuration's own row marks its mean."""
    plt = _pyplot()
    rows, softmax = configuration_losses(runs)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.3))
    lowest = min(min(v) for _, v, _, _ in rows)
    highest = max(max(v) for _, v, _, _ in rows)
    pad = 0.08 * (highest - lowest or 1.0)
    ticked = False
    for y, (label, values, attention, ref) in enumerate(rows):
        mean = float(np.mean(values))
        ax.barh(y, mean - (lowest - pad), left=lowest - pad, height=0.5, alpha=0.35,
                color="0.5" if attention == "softmax" else "C0")
        ax.plot(values, [y] * len(values), "o", ms=4, color="k")
        note = f"n={len(values)}"
        if ref is not None and not (attention == "softmax" and abs(mean - ref) < 1e-12):
            note += f", {100 * (mean / ref - 1):+.2f}%"
        ax.annotate(note, (max(values), y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7)
        if ref is not None and attention != "softmax" and not (softmax and abs(ref - softmax[0]) < 1e-12):
            ax.plot([ref, ref], [y - 0.35, y + 0.35], color="0.2", lw=1.2,
                    label=None if ticked else "softmax of the same size (mean)")
            ticked = True
    if softmax:
        ax.axvline(softmax[0], ls="--", color="0.3", lw=0.8, label="softmax (mean)")
    if softmax or ticked:
        ax.legend(fontsize=7, loc="upper right")
    ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=7)
    ax.set_xlim(lowest - pad, highest + 3 * pad)
    ax.set(xlabel="validation loss (nats); dots: seeds, bar: mean", title="validation loss by configuration")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, stem)


SIZE_KEYS = ("model.n_layer", "model.n_embd", "model.n_head")


def model_parameters(run: RunResults) -> int:
    """Parameters of the model a run's config builds (built on the meta device: no memory, no initialisation)."""
    import torch

    from model.checkpoint import build_model

    with torch.device("meta"):
        return build_model(run.config).num_parameters()


class Trend(NamedTuple):
    """One configuration of size_trends: its label without the size settings, its attention, {parameters: the
    seeds' final validation losses}, the training tokens of its runs (None where they differ) and {parameters:
    (model.n_layer, model.n_embd)}, the size each point was run at."""

    label: str
    attention: str
    points: dict[int, list[float]]
    tokens: int | None
    sizes: dict[int, tuple]


def size_trends(runs: list[RunResults]) -> list[Trend]:
    """Per family of configurations equal but for the model's size (SIZE_KEYS; analysis.results.families) that was
    run at two or more sizes (depth × width, model.n_layer and model.n_embd), its Trend, in the order of first
    appearance. Where one size was run with several head counts, the head count with the most runs stands for it
    (the others are variants at that size, not sizes)."""
    out = []
    for family in families(group_runs(runs), SIZE_KEYS):
        by_size: dict[tuple, Group] = {}  # (n_layer, n_embd) -> the group of the most-run head count
        for group in family:
            size = (group.settings.get("model.n_layer"), group.settings.get("model.n_embd"))
            if size not in by_size or len(group.runs) > len(by_size[size].runs):  # the first of equals stays
                by_size[size] = group
        points: dict[int, list[float]] = {}
        sizes: dict[int, tuple] = {}
        tokens = set()
        for size, group in by_size.items():
            losses = [loss for loss in (run.final_val_loss() for run in group.runs) if loss is not None]
            if losses:
                n = model_parameters(group.runs[0])
                points.setdefault(n, []).extend(losses)
                sizes[n] = size
                tokens |= {run.metrics[-1].get("tokens") if run.metrics else None for run in group.runs}
        if len(by_size) >= 2 and len(points) >= 2:
            out.append(Trend(family[0].label_without(SIZE_KEYS), family[0].attention, points,
                             next(iter(tokens)) if len(tokens) == 1 else None, sizes))
    return out


def _tokens(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def size_gaps(trends: list[Trend]) -> list[tuple[str, dict[int, float]]]:
    """Per configuration of ``trends`` other than softmax: (label, {parameters: 100 · (its mean loss / softmax's
    mean loss at the same size − 1)}) at the sizes (model.n_layer × model.n_embd) where the softmax trend has runs
    too."""
    soft = next((t for t in trends if t.label == "softmax"), None)
    if soft is None:
        return []
    soft_at = {soft.sizes[n]: losses for n, losses in soft.points.items()}
    out = []
    for t in trends:
        if t is soft:
            continue
        gaps = {n: 100 * (float(np.mean(losses)) / float(np.mean(soft_at[t.sizes[n]])) - 1)
                for n, losses in t.points.items() if t.sizes[n] in soft_at}
        if gaps:
            out.append((t.label, gaps))
    return out


def size_trend(trends: list[Trend], stem: Path) -> list[Path]:
    """Left: final validation loss against parameters (log axis), one line through the means per configuration,
    each seed a dot. Right (where softmax ran at the sizes): each configuration's gap to softmax of the same size,
    in percent of softmax's loss, where a trend towards parity shows as a line falling to 0. The title says the
    token budget, fixed across sizes."""
    if not trends:
        raise ValueError("size_trend: no configuration was run at two or more model sizes (model.n_layer × "
                         "model.n_embd, everything but the heads equal)")
    plt = _pyplot()
    gaps = size_gaps(trends)
    fig, axes = plt.subplots(1, 2 if gaps else 1, figsize=(11 if gaps else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    colours = {}
    for i, (label, attention, points, _, _) in enumerate(trends):
        sizes = sorted(points)
        colours[label] = "0.3" if label == "softmax" else f"C{i % 10}"  # softmax as shipped, as elsewhere
        ax.plot(sizes, [float(np.mean(points[n])) for n in sizes], "-", color=colours[label], label=label)
        for n in sizes:
            ax.plot([n] * len(points[n]), points[n], "o", ms=4, color=colours[label])
    tokens = {t.tokens for t in trends}
    budget = f"{_tokens(next(iter(tokens)))} tokens at every size" if len(tokens) == 1 and None not in tokens \
        else "the runs' own token budgets"
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel="final validation loss (nats)", title="dots: seeds, line: means")
    ax.grid(alpha=0.3)
    if gaps:
        right = axes[0, 1]
        for label, points in gaps:
            sizes = sorted(points)
            right.plot(sizes, [points[n] for n in sizes], "o-", ms=4, color=colours[label], label=label)
        right.axhline(0.0, ls="--", lw=0.8, color="0.3", label="softmax")
        right.set_xscale("log")
        right.set(xlabel="parameters", ylabel="gap to softmax of the same size (% of its loss)",
                  title="the gap by size (means over seeds)")
        right.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"size trend at fixed tokens ({budget})", fontsize=10)
    return save(fig, stem)


def empty_row_points(groups: list[Group]) -> list[tuple[Group, list[tuple[float, float]]]]:
    """Per configuration whose runs have a validation loss and an analysis summary: (its group, [(empty-row share at
    the training length, final validation loss) per seed])."""
    out = []
    for group in groups:
        points = []
        for run in group.runs:
            summary, loss = run.length_summary(), run.final_val_loss()
            if summary is not None and summary.get("empty_row_share") is not None and loss is not None:
                points.append((float(summary["empty_row_share"]), loss))
        if points:
            out.append((group, points))
    return out


def loss_vs_empty_rows(runs: list[RunResults], stem: Path) -> list[Path]:
    """Final validation loss against the empty-row share, one point per configuration (the means over its seeds;
    the seeds as small dots), numbered beside it and named by number in the legend (names beside crowded points
    would overlap), softmax's mean loss as a dashed line."""
    from analysis.report import reference_group

    groups = group_runs(runs)
    configs = empty_row_points(groups)
    if not configs:
        raise ValueError("loss_vs_empty_rows: no run has both a validation loss and an analysis summary")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ref = reference_group(groups)
    for i, (group, points) in enumerate(configs):
        x, y = float(np.mean([p[0] for p in points])), float(np.mean([p[1] for p in points]))
        colour, marker = f"C{i % 10}", "osD^v"[i // 10 % 5]
        ax.plot([p[0] * 100 for p in points], [p[1] for p in points], ".", ms=4, alpha=0.5, color=colour)
        ax.plot(x * 100, y, marker, ms=6, color=colour, label=f"{i + 1}  {group.label}")
        ax.annotate(str(i + 1), (x * 100, y), xytext=(4, 2), textcoords="offset points", fontsize=6, color=colour)
        if group is ref:
            ax.axhline(y, ls="--", lw=0.8, color="0.3", label=f"{group.label} (mean)")
    ax.set(xlabel="empty rows at the training length (% of rows with no non-zero weight)",
           ylabel="final validation loss (nats)",
           title="loss against attention switched off (a point a configuration: its seeds' mean)")
    ax.grid(alpha=0.3)
    _legend(ax)
    return save(fig, stem)


def extrapolation_curves(runs: list[RunResults]) -> list[tuple[str, str, dict[str, dict[int, list[float]]]]]:
    """Per configuration (group_runs' labels) whose runs hold eval/length_extrapolation.json: (label, attention,
    {"plain" | "ntk": {evaluated length: the seeds' perplexities}}), in the groups' order."""
    out = []
    for group in group_runs(runs):
        curves: dict[str, dict[int, list[float]]] = {"plain": {}, "ntk": {}}
        for run in group.runs:
            result = run.eval_result("length_extrapolation") or {}
            for entry in (result.get("lengths") or {}).values():
                for mode in curves:
                    value = (entry.get(mode) or {}).get("perplexity")
                    if isinstance(value, (int, float)) and isinstance(entry.get("seq_len"), int):
                        curves[mode].setdefault(entry["seq_len"], []).append(float(value))
        if curves["plain"]:
            out.append((group.label, group.attention, curves))
    return out


def length_extrapolation(curves: list[tuple[str, str, dict[str, dict[int, list[float]]]]],
                         stem: Path) -> list[Path]:
    """Perplexity against evaluated length (eval.py's length_extrapolation) from ``extrapolation_curves``, plain RoPE
    and NTK-aware scaling side by side, one line per configuration: the mean over its seeds, each seed a faint dot;
    log-log axes, the training length where the curves start."""
    plt = _pyplot()
    if not curves:
        raise ValueError("length_extrapolation: no run holds eval/length_extrapolation.json "
                         "(python eval.py run_dir=<run> tasks=[length_extrapolation])")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, (label, attention, by_mode) in enumerate(curves):
        for ax, mode in zip(axes, ("plain", "ntk")):
            points = sorted(by_mode[mode].items())
            if not points:
                continue
            lengths = [n for n, _ in points]
            ax.plot(lengths, [float(np.mean(v)) for _, v in points], marker="o", ms=3, color=f"C{i % 10}",
                    ls="--" if attention == "softmax" else "-", label=f"{label} (n={len(points[0][1])})")
            for n, values in points:
                ax.plot([n] * len(values), values, ".", color=f"C{i % 10}", alpha=0.35, ms=4)
    evaluated = sorted({n for _, _, by_mode in curves for n in by_mode["plain"]})
    for ax, title in zip(axes, ("plain RoPE", "NTK-aware RoPE scaling")):
        ax.set(xscale="log", yscale="log", xlabel="evaluated length (tokens)", title=title)
        ax.set_xticks(evaluated, [str(n) for n in evaluated])
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("perplexity (mean over seeds; dots: seeds)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, stem)


def _layer_series(metrics: list[dict], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """The logged values of ``<prefix>/<layer>`` (and ``<prefix>/mean``) against step: {layer or "mean":
    (steps, values)}, layers in numeric order, "mean" last."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in metrics:
        step = record.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in record.items():
            head, _, tail = key.rpartition("/")
            if head == prefix and (tail.isdigit() or tail == "mean") and isinstance(value, (int, float)):
                steps, values = series.setdefault(tail, ([], []))
                steps.append(int(step))
                values.append(float(value))
    return {k: series[k] for k in sorted(series, key=lambda k: (k == "mean", int(k) if k.isdigit() else 0))}


def has_diagnostics(run: RunResults) -> bool:
    """Whether the run's metrics.jsonl holds diagnostics logged while training (diag/* keys)."""
    return any(key.startswith(PREFIX + "/") for record in run.metrics for key in record)


def training_diagnostics(run: RunResults, stem: Path) -> list[Path]:
    """Per layer against step: empty-row share, non-zeros per row, tile occupancy (diag/* of
    analysis.diagnostics), λ and β (logged per layer); the mean over layers dashed."""
    plt = _pyplot()
    titles = {"empty_rows": "empty rows (share of rows)", "nonzeros_per_row": "non-zero weights per row",
              "tile_occupancy": f"occupied {TILE} × {TILE} tiles (share)"}
    panels = [(f"{PREFIX}/{m}", titles[m]) for m in MEASURES] + [("lambda", "λ"), ("beta", "β (learnable)")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (prefix, title) in zip(axes.flat, panels):
        series = _layer_series(run.metrics, prefix)
        for key, (steps, values) in series.items():
            if key == "mean":
                ax.plot(steps, values, "k--", lw=1, label="mean over layers")
            else:
                ax.plot(steps, values, color=f"C{int(key) % 10}", lw=1, marker="." if len(steps) < 30 else None,
                        label=f"layer {key}")
        if not series:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="step", ylabel=title)
        if prefix.endswith(("empty_rows", "tile_occupancy")):
            ax.set_ylim(-0.03, 1.03)
        elif prefix.endswith("nonzeros_per_row") and series:
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    legend_ax = axes.flat[-1]
    legend_ax.axis("off")
    entries: dict[str, object] = {}
    for ax in list(axes.flat)[:-1]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        legend_ax.legend(list(entries.values()), list(entries), fontsize=8, loc="center", frameon=False)
    fig.suptitle(f"{_label(run)}: attention while training", fontsize=9)
    return save(fig, stem)


def theory_check(stem: Path, head_dim: int, betas: list[float], max_position: int, trials: int,
                 seed: int) -> list[Path]:
    plt = _pyplot()
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


# Figures drawn from analysis summaries; the others read only metrics.jsonl (or nothing).
NEED_ANALYSIS = ("sparsity_by_layer", "first_token_ratio", "sink_by_layer", "dispersion", "attention_maps",
                 "lambda_by_layer", "loss_vs_empty_rows")
FIGURES = NEED_ANALYSIS + ("loss_curves", "loss_by_configuration", "length_extrapolation", "size_trend",
                           "training_diagnostics", "theory_check")


def make_figures(cfg: DictConfig) -> list[Path]:
    """The figures of the module docstring for the runs of ``cfg`` (conf/analysis_figures.yaml): all, or
    those named in ``cfg.figures``."""
    wanted = list(cfg.get("figures") or FIGURES)
    unknown = [f for f in wanted if f not in FIGURES]
    if unknown:
        raise ValueError(f"figures: unknown {unknown}; choose from {', '.join(FIGURES)}")
    need_analysis = any(f in NEED_ANALYSIS for f in wanted)
    runs = [load_results(r, need_analysis=need_analysis) for r in run_list(cfg.runs)]
    if need_analysis:
        check_metrics_versions(runs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    length = int(cfg.length) if cfg.length else None
    paths = []
    if "sparsity_by_layer" in wanted:
        paths += sparsity_by_layer(runs, out / "sparsity_by_layer", length)
    if "first_token_ratio" in wanted:
        paths += first_token_ratio(runs, out / "first_token_ratio")
    if "sink_by_layer" in wanted:
        paths += sink_by_layer(runs, out / "sink_by_layer", length)
    if "dispersion" in wanted:
        paths += dispersion(runs, out / "dispersion")
    if "attention_maps" in wanted:
        for run in runs:
            paths += attention_maps(run, out / f"attention_maps_{run.name}")
    if "lambda_by_layer" in wanted:
        paths += lambda_by_layer(runs, out / "lambda_by_layer")
    if "loss_curves" in wanted:
        paths += loss_curves(runs, out / "loss_curves")
    if "loss_by_configuration" in wanted:
        paths += loss_by_configuration(runs, out / "loss_by_configuration")
    if "loss_vs_empty_rows" in wanted:
        paths += loss_vs_empty_rows(runs, out / "loss_vs_empty_rows")
    if "length_extrapolation" in wanted:
        curves = extrapolation_curves(runs)
        if curves or cfg.get("figures"):  # asked for by name, none to draw: length_extrapolation says so
            paths += length_extrapolation(curves, out / "length_extrapolation")
    if "size_trend" in wanted:
        trends = size_trends(runs)
        if trends or cfg.get("figures"):  # asked for by name, none to draw: size_trend says so
            paths += size_trend(trends, out / "size_trend")
    if "training_diagnostics" in wanted:
        logged = [run for run in runs if has_diagnostics(run)]
        if not logged and cfg.get("figures"):
            raise ValueError(f"training_diagnostics: no run's metrics.jsonl holds {PREFIX}/* metrics "
                             "(logged while training by analysis.diagnostics)")
        for run in logged:
            paths += training_diagnostics(run, out / f"training_diagnostics_{run.name}")
    if "theory_check" in wanted:
        t = cfg.theory
        paths += theory_check(out / "theory_check", int(t.head_dim), [float(b) for b in t.betas],
                              int(t.max_position), int(t.trials), int(t.seed))
    return paths


@hydra.main(config_path="../conf", config_name="analysis_figures", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        paths = make_figures(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"{len(paths)} files in {Path(cfg.out)}")


if __name__ == "__main__":
    main()
