"""What the figures share: writing a figure, one style and label per variant, the legend beside the axes, the
probe lengths' axis and title, means over layers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.results import RunResults, group_runs
from evaluation import plots


def save(fig, stem: Path) -> list[Path]:
    """Write ``fig`` as stem.png and stem.pdf (evaluation.plots.save), the legends that sit outside the axes
    included; close it, return both paths."""
    return plots.save(fig, stem, legends_outside=True)


def run_label(run: RunResults) -> str:
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


def legend(*axes) -> None:
    """One legend of the labelled lines of ``axes`` (each label once), right of the last, hiding no data."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        axes[-1].legend(list(entries.values()), list(entries), fontsize=7, loc="upper left",
                        bbox_to_anchor=(1.02, 1.0), frameon=False)


def lengths_title(lengths: set[int]) -> str:
    return "T = " + ", ".join(str(t) for t in sorted(lengths))


def length_axis(ax, lengths: list[int]) -> None:
    """Log-2 x axis labelled at the probe lengths."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(t) for t in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())


def mean_over_layers(per_layer: list[list[float]]) -> np.ndarray:
    values = np.array(per_layer, dtype=float)
    with np.errstate(all="ignore"):
        counts = (~np.isnan(values)).sum(0)
        return np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), np.nan)
