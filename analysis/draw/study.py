"""Figures of a study's losses: training curves, the loss by configuration against softmax of the same size, the
loss against the share of empty rows, and perplexity against evaluated length."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.comparisons import reference_group, softmax_for
from analysis.draw.common import legend, run_styles, save
from analysis.results import Group, RunResults, group_runs
from evaluation.plots import pyplot


def loss_curves(runs: list[RunResults], stem: Path) -> list[Path]:
    plt = pyplot()
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
    legend(val_ax if val_ax.get_legend_handles_labels()[0] else train_ax)
    return save(fig, stem)


def configuration_losses(runs: list[RunResults]) -> tuple[list[tuple[str, list[float], str, float | None]],
                                                         list[float]]:
    """(rows, reference) of loss_by_configuration: rows (label, the seeds' final validation losses, attention, the
    mean loss of softmax of the same model size and data, analysis.comparisons.softmax_for, or None) with the highest
    mean first, so the best is drawn at the top; reference: [the mean of softmax as the studies run it]
    (analysis.comparisons.reference_group) or [] without it."""

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
    plt = pyplot()
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

    groups = group_runs(runs)
    configs = empty_row_points(groups)
    if not configs:
        raise ValueError("loss_vs_empty_rows: no run has both a validation loss and an analysis summary")
    plt = pyplot()
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
    legend(ax)
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
    plt = pyplot()
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
