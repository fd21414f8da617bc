"""Figures of the diagnostics logged while training (diag/* in metrics.jsonl), per layer against step."""
from __future__ import annotations

from pathlib import Path

from analysis.diagnostics import MEASURES, PREFIX
from analysis.draw.common import run_label, save
from analysis.metrics import TILE
from analysis.results import RunResults
from evaluation.plots import pyplot


def layer_series(metrics: list[dict], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
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
    plt = pyplot()
    titles = {"empty_rows": "empty rows (share of rows)", "nonzeros_per_row": "non-zero weights per row",
              "tile_occupancy": f"occupied {TILE} × {TILE} tiles (share)"}
    panels = [(f"{PREFIX}/{m}", titles[m]) for m in MEASURES] + [("lambda", "λ"), ("beta", "β (learnable)")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (prefix, title) in zip(axes.flat, panels):
        series = layer_series(run.metrics, prefix)
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
    fig.suptitle(f"{run_label(run)}: attention while training", fontsize=9)
    return save(fig, stem)
