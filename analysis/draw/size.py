"""The size trend: final validation loss against parameters for configurations run at several model sizes, and
each one's gap to softmax of the same size."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from analysis.draw.common import save
from analysis.results import Group, RunResults, families, group_runs
from evaluation.plots import pyplot


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
    plt = pyplot()
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
