"""The figures of the evaluation tasks, each written as PNG and PDF beside the JSON results; ``pyplot`` and ``save``
also serve analysis.figures, so every figure of the project is written one way."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path, tight: bool = True, legends_outside: bool = False) -> list[Path]:
    """Write ``fig`` as stem.png and stem.pdf, close it, return both paths (a stem's dots stay: run names hold
    them). ``tight``: tight layout first; ``legends_outside``: the saved area grows to take legends placed outside
    the axes. The PDF carries no creation date, so a figure drawn again from the same data is the same file (kept
    figures change only when their data do); the PNG is stored with a palette (``palette_png``)."""
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in ("png", "pdf")]
    if tight:
        fig.tight_layout()
    rgba = io.BytesIO()  # the PNG is drawn in memory and written once, with its palette
    for target, kind in ((rgba, "png"), (paths[1], "pdf")):
        fig.savefig(target, format=kind, dpi=150, bbox_inches="tight" if legends_outside else None,
                    metadata={"CreationDate": None} if kind == "pdf" else None)
    pyplot().close(fig)
    palette_png(rgba, paths[0])
    return paths


def palette_png(source, path: Path) -> None:
    """Write the PNG ``source`` (a file or a buffer) to ``path`` with a palette of at most 256 colours (median cut,
    no dithering), optimised: a plot's flat colours survive and the file is about a third of matplotlib's RGBA,
    which keeps the figures a study keeps small. Deterministic, so the same figure gives the same bytes. Pillow
    comes with matplotlib."""
    from PIL import Image

    with Image.open(source) as image:
        image.load()
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, format="PNG", optimize=True)


def _log_binned(values: np.ndarray, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(geometric mean position, mean value) in ``bins`` log-spaced bins of positions 1..len(values);
    bins narrower than one position keep single positions, so short curves are drawn as they are."""
    edges = np.unique(np.geomspace(1, len(values) + 1, bins + 1).astype(int))
    centres = np.array([np.exp(np.log(np.arange(a, b)).mean()) for a, b in zip(edges[:-1], edges[1:])])
    means = np.array([values[a - 1:b - 1].mean() for a, b in zip(edges[:-1], edges[1:])])
    return centres, means


def loss_by_position(curves: dict[str, list[float]], stem: Path, train_len: int | None = None) -> list[Path]:
    """Mean loss (nats) against token position (1-based, log axis), one line per label, averaged in
    log-spaced position bins; a dashed line marks the training length when given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, values in curves.items():
        ax.plot(*_log_binned(np.asarray(values, dtype=float)), label=label, lw=1)
    if train_len is not None:
        ax.axvline(train_len, color="grey", ls="--", lw=0.8, label="training length")
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    if len(curves) > 1 or train_len is not None:
        ax.legend(fontsize=7)
    return save(fig, stem)


def perplexity_by_length(lengths: list[int], series: dict[str, list[float]], stem: Path) -> list[Path]:
    """Perplexity against evaluation length (log axes), one line per label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, values in series.items():
        ax.plot(lengths, values, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, stem)


def accuracy_heatmaps(grids: dict[str, np.ndarray], lengths: list[int], depths: list[float], stem: Path,
                      cols: int) -> list[Path]:
    """Heatmaps of accuracy in [0, 1] (rows = depth, columns = length, each cell annotated), ``cols`` per
    figure row, in the order of ``grids`` (title -> (lengths, depths) array); NaN cells (not run) are grey,
    marked "skip"."""
    plt = pyplot()
    rows = (len(grids) + cols - 1) // cols
    size = (cols * (0.5 * len(lengths) + 2.4) + 1.2, rows * (0.3 * len(depths) + 1.4))
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    image = None
    for ax, (title, grid) in zip(axes.flat, grids.items()):
        grid = np.asarray(grid, dtype=float).T
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap=cmap, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, "skip" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if np.isnan(value) or value > 0.6 else "white")
        ax.set_xticks(range(len(lengths)), [str(x) for x in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_xlabel("length (tokens)", fontsize=8)
        ax.set_ylabel("depth", fontsize=8)
        ax.set_title(title, fontsize=9)
    for ax in list(axes.flat)[len(grids):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    return save(fig, stem, tight=False)  # the colour bar spans the axes: no tight layout
