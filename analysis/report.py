"""The paper's claims (SPEC §5), measured across runs: python -m analysis.report runs=[runs/a,runs/b]

Runs whose configs differ only in seed, name and machine settings form one group (a "variant"); every
number is the mean over the group's runs, with the standard deviation and run count when there are
several. Attention metrics come from ``python -m analysis.attention`` (at the probe length nearest the
training length unless a claim is about length), validation loss from eval/val_loss.json or else the
last val_loss in metrics.jsonl, passkey and length extrapolation from eval/passkey.json and
eval/length_extrapolation.json when present ("not run" otherwise). A claim "holds" by the tolerances of
conf/analysis_report.yaml, printed in the table. A second table compares every configuration's validation
loss over seeds with softmax's (Welch's t-test, Holm-corrected: ``loss_table``), beside its exact zeros, empty
rows and sink rate; with ``confirm_seeds`` (seeds held out from picking a recipe) a section tests each recipe on
those seeds alone (``confirmation_table``); a last table lists every run. Writes the markdown to ``out`` and prints it.
Analysis summaries of another metrics version than this code's are refused (analysis.results).
"""
from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from analysis.comparisons import (confirmation_section, loss_table, num, parse_confirm_seeds, power_family,
                                  recipes_section, softmax_for)
from analysis.measures import (at_length, at_longest, extrapolation_ratio, learned_beta, mean_or_none, nonzeros_slope,
                               passkey_accuracy, sink_measure, sink_rate, sink_rate_nonempty_rows, sink_ratio_max,
                               group_values)
from analysis.metrics import TILE
from analysis.results import Group, RunResults, check_metrics_versions, group_runs, load_results, run_list

NOT_RUN = "not run"


def fmt(values: list[float], digits: int = 4) -> str:
    """'mean' for one value, 'mean ± std (n=k)' for several, NOT_RUN for none."""
    if not values:
        return NOT_RUN
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.fmean(values):.{digits}g} ± {statistics.stdev(values):.2g} (n={len(values)})"


@dataclass
class Claim:
    text: str
    paper: str
    measure: str
    cells: dict[str, str]
    holds: str


def _cells(groups: list[Group], measure: Callable[[RunResults], float | None]) -> dict[str, str]:
    return {g.label: fmt(group_values(g, measure)) for g in groups}


def _verdict(ok: bool | None) -> str:
    return NOT_RUN if ok is None else ("yes" if ok else "no")


def _per_group(groups: list[Group], test: Callable[[Group], bool | None]) -> str:
    """One verdict, or 'label: verdict' for each group when several are tested."""
    verdicts = [(g.label, test(g)) for g in groups]
    verdicts = [(label, ok) for label, ok in verdicts if ok is not None]
    if not verdicts:
        return NOT_RUN
    if len(verdicts) == 1:
        return _verdict(verdicts[0][1])
    return "; ".join(f"{label}: {_verdict(ok)}" for label, ok in verdicts)


def claims(groups: list[Group], tol: DictConfig) -> list[Claim]:
    """Each claim of SPEC §5 (and SPEC §4's two-view claim), measured per group, with its verdict."""
    tda = [g for g in groups if g.attention == "tda"]
    mean = lambda g, m: mean_or_none(group_values(g, m))  # noqa: E731

    def verdict(measure, holds, against_softmax: bool = False) -> Callable[[Group], bool | None]:
        """A group's verdict: holds(its mean[, the mean of softmax of the same size, or None]); None where its own
        mean is missing. Each mean is read once."""
        def test(g: Group) -> bool | None:
            own = mean(g, measure)
            if own is None:
                return None
            if not against_softmax:
                return holds(own)
            ref = softmax_for(groups, g)
            return holds(own, mean(ref, measure) if ref else None)
        return test

    out = []

    sparsity = at_length("sparsity")
    out.append(Claim("TDA has ≥ 99% exact zeros", "99%", f"exact-zero share of causal entries "
                     f"(≥ {tol.sparsity_min})", _cells(groups, sparsity),
                     _per_group(tda, verdict(sparsity, lambda own: own >= tol.sparsity_min))))
    no_sink = verdict(sink_ratio_max, lambda own, soft: own <= tol.sink_ratio_max and (soft is None or soft > own),
                      against_softmax=True)
    out.append(Claim("no attention sink: first-token ratio at the uniform level at every length, softmax's "
                     "above", "uniform vs rising", f"max over lengths of ratio / (H_T/T) (TDA ≤ "
                     f"{tol.sink_ratio_max}, softmax above TDA)", _cells(groups, sink_ratio_max),
                     _per_group(tda, no_sink)))
    out.append(Claim("no attention sink (Gu et al.'s sink rate)", "—", f"share of (sequence, layer, head) with "
                     f"α_0 > 0.3 on 64 tokens, α_0 the mean weight on token 0 over all rows, empty ones counting 0 "
                     f"(TDA ≤ {tol.sink_rate_max})", _cells(groups, sink_rate),
                     _per_group(tda, verdict(sink_rate, lambda own: own <= tol.sink_rate_max))))
    out.append(Claim("sink rate over non-empty rows only (diagnostic)", "—", "as above, α_0 averaged over the "
                     "non-empty rows only (empty rows dropped from the denominator; metrics version 1's rule)",
                     _cells(groups, sink_rate_nonempty_rows), "—"))
    out.append(Claim("empty rows on the sink probes (diagnostic)", "—", "share of the 64-token probes' rows with "
                     "no non-zero weight", _cells(groups, sink_measure("empty_row_share")), "—"))
    out.append(Claim("non-zeros per row stay O(1) as length grows", "O(1)", f"slope of log non-zeros per row "
                     f"against log length (TDA ≤ {tol.nonzeros_slope_max}; dense = 1)",
                     _cells(groups, nonzeros_slope),
                     _per_group(tda, verdict(nonzeros_slope, lambda own: own <= tol.nonzeros_slope_max))))

    loss = RunResults.final_val_loss
    out.append(Claim("validation loss on par with softmax", "3.1190 vs 3.1196", f"validation loss (TDA ≤ "
                     f"softmax × {1 + tol.loss_gap_max:g}, softmax of the same model and data)",
                     _cells(groups, loss),
                     _per_group(tda, verdict(loss, lambda own, soft: None if soft is None
                                             else own <= soft * (1 + tol.loss_gap_max), against_softmax=True))))

    passkey = lambda run: passkey_accuracy(run, int(tol.passkey_length))  # noqa: E731
    out.append(Claim(f"passkey retrieval at ~{tol.passkey_length} tokens better than softmax", "15% vs 6%",
                     "passkey exact-match accuracy at the nearest evaluated length (mean over depths and key counts)", _cells(groups, passkey),
                     _per_group(tda, verdict(passkey, lambda own, soft: None if soft is None else own > soft,
                                             against_softmax=True))))

    powers = {}
    for g in power_family(tda):
        value = mean(g, loss)
        if value is not None:
            powers.setdefault(float(g.setting("attention.power") or 2.0), []).append(value)
    best = min(powers, key=lambda p: min(powers[p])) if len(powers) > 1 else None
    out.append(Claim("p = 2 is the best power", "p = 2", "validation loss of TDA runs by attention.power (the verdict "
                     "compares only configurations that differ in the power alone)",
                     {g.label: (f"p={g.setting('attention.power')}: {fmt(group_values(g, loss))}" if g in tda else "—")
                      for g in groups}, NOT_RUN if best is None else _verdict(best == 2.0)))

    low, high = (float(b) for b in tol.beta_range)
    out.append(Claim(f"learned β stays in [{low:g}, {high:g}]", "[0.5, 1]", "range of learned β over layers "
                     "and heads", {g.label: (f"{min(b):.3g} … {max(b):.3g}" if (b := sum(
                         (learned_beta(r) for r in g.runs), [])) else "—") for g in groups},
                     _per_group(tda, lambda g: None if not (b := sum((learned_beta(r) for r in g.runs), []))
                                else all(low <= v <= high for v in b))))

    consensus = at_longest("consensus_per_row")
    out.append(Claim("consensus survivors (non-zero in both views) vanish as context grows", "vanish",
                     f"consensus survivors per row at the longest probe length (TDA ≤ {tol.consensus_max})",
                     _cells(groups, consensus),
                     _per_group(tda, lambda g: None if mean(g, consensus) is None
                                else mean(g, consensus) <= tol.consensus_max)))
    out.append(Claim("correlation of the two views' scores (information)", "0.075 → 0.123 in training",
                     "Pearson correlation of the views' raw scores (q̂·k̂ for TDA)",
                     _cells(groups, at_length("score_correlation")), "—"))
    for mode, what in (("plain", "plain RoPE"), ("ntk", "NTK-aware RoPE scaling")):
        out.append(Claim(f"length extrapolation, {what} (information)", "—", "perplexity at the longest "
                         "evaluated length / at the training length", _cells(groups, lambda r, m=mode:
                                                                             extrapolation_ratio(r, m)), "—"))
    return out


def per_run_rows(runs: list[RunResults]) -> list[str]:
    """One markdown row per run: the numbers behind the claims, unaveraged (— where not measured)."""
    lines = ["| run | attention | val loss | exact zeros (train length / longest) | empty rows | non-zeros per row "
             "(train length / longest) | first-token ratio ÷ uniform (max) | sink rate (over non-empty rows) | ppl longest ÷ train "
             "(plain / NTK) | passkey (exact / likelihood) | mean λ | occupied tiles (train length / longest) |",
             "|" + "---|" * 12]
    zeros_train, zeros_longest = at_length("sparsity"), at_longest("sparsity")
    nz_train, nz_longest = at_length("nonzeros_per_row"), at_longest("nonzeros_per_row")
    tiles_train, tiles_longest = at_length("tile_occupancy"), at_longest("tile_occupancy")
    empty = at_length("empty_row_share")
    for run in runs:
        lambdas = (run.summary or {}).get("lambda_per_layer") or []
        lam = statistics.fmean(lambdas) if lambdas else None
        pk = passkey_accuracy(run, None), passkey_accuracy(run, None, "likelihood")
        lines.append(" | ".join([
            f"| {run.name}", run.attention, num(run.final_val_loss(), 4),
            f"{num(zeros_train(run), percent=True)} / {num(zeros_longest(run), percent=True)}",
            num(empty(run), percent=True),
            f"{num(nz_train(run), 4)} / {num(nz_longest(run), 4)}", num(sink_ratio_max(run)),
            f"{num(sink_rate(run))} ({num(sink_rate_nonempty_rows(run))})",
            f"{num(extrapolation_ratio(run))} / {num(extrapolation_ratio(run, 'ntk'))}",
            "—" if pk[0] is None else f"{num(pk[0])} / {num(pk[1])}", num(lam),
            f"{num(tiles_train(run), percent=True)} / {num(tiles_longest(run), percent=True)}"]) + " |")
    return lines


def render(groups: list[Group], table: list[Claim], confirm_seeds: Sequence[int] = ()) -> str:
    """The claims as one markdown table: claim, paper, measure, one column per group, holds; then the loss, recipe
    and (with ``confirm_seeds``) fresh-seed confirmation tables and the runs."""
    labels = [g.label for g in groups]
    lines = ["| claim (SPEC §5) | paper | measure | " + " | ".join(labels) + " | holds |",
             "|" + "---|" * (len(labels) + 4)]
    for c in table:
        lines.append(f"| {c.text} | {c.paper} | {c.measure} | "
                     + " | ".join(c.cells.get(label, "—") for label in labels) + f" | {c.holds} |")
    runs = "; ".join(f"{g.label}: {', '.join(r.name for r in g.runs)}" for g in groups)
    every = [r for g in groups for r in g.runs]
    return ("\n".join(lines) + f"\n\nRuns per column: {runs}.\n\n## Validation loss against softmax, over seeds\n\n"
            "Configurations are runs equal up to the seed, named by their settings that differ from the attention's "
            "defaults. Δ: the mean's difference from the mean of softmax with the same non-attention settings (model "
            "size, data; — where there is none); p (Welch): Welch's two-sided t-test against those "
            "softmax seeds (two or more seeds each); p (Holm): adjusted over the configurations compared. Exact "
            "zeros and empty rows at the probe length nearest the training length, sink rate Gu et al.'s "
            "(means over seeds).\n\n" + "\n".join(loss_table(groups)) + recipes_section(groups)
            + confirmation_section(groups, confirm_seeds) + "\n\n## Per run\n\n"
            "Exact zeros and empty rows (rows with no non-zero weight) at the probe length nearest the training "
            "length; sink rate: Gu et al.'s (α_0 over all rows of the 64-token probes, empty rows counting 0), in "
            "brackets the diagnostic with α_0 over non-empty rows only; "
            "passkey averaged over every evaluated length, depth and key count; mean λ over layers "
            f"(TDA); occupied tiles: share of the causal map's {TILE} × {TILE} tiles holding any non-zero weight (what "
            "a kernel skipping empty tiles would still compute; — where the analysis predates the measure).\n\n" + "\n".join(per_run_rows(every)) + "\n")


def make_report(cfg: DictConfig) -> str:
    """The claims table for ``cfg.runs``, written to ``cfg.out``; returns the markdown. ValueError for a
    ``cfg.confirm_seeds`` that is not a list of integer seeds (checked before any run is read)."""
    seeds = parse_confirm_seeds(cfg.get("confirm_seeds"))
    runs = [load_results(r) for r in run_list(cfg.runs)]
    check_metrics_versions(runs)
    groups = group_runs(runs)
    text = render(groups, claims(groups, cfg.tolerance), seeds)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


@hydra.main(config_path="../conf", config_name="analysis_report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        text = make_report(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(text)
    print(f"written to {cfg.out}")


if __name__ == "__main__":
    main()
