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
    sink_by_layer         per layer: first-token ratio over its uniform value, Gu et al.'s sink rate, empty probe rows
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

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from analysis.diagnostics import PREFIX
from analysis.draw.attention import (attention_maps, dispersion, first_token_ratio, lambda_by_layer, sink_by_layer,
                                     sparsity_by_layer, theory_check)
from analysis.draw.size import size_trend, size_trends
from analysis.draw.study import (extrapolation_curves, length_extrapolation, loss_by_configuration, loss_curves,
                                 loss_vs_empty_rows)
from analysis.draw.training import has_diagnostics, training_diagnostics
from analysis.results import check_metrics_versions, load_results, run_list


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
