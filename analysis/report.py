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

import math
import statistics
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from analysis.metrics import TILE
from analysis.results import (Group, RunResults, check_metrics_versions, families, group_runs, load_results,
                              run_list)
from analysis.stats import holm, welch

NOT_RUN = "not run"


def _values(group: Group, measure: Callable[[RunResults], float | None]) -> list[float]:
    return [v for v in (measure(run) for run in group.runs) if v is not None and not math.isnan(v)]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def fmt(values: list[float], digits: int = 4) -> str:
    """'mean' for one value, 'mean ± std (n=k)' for several, NOT_RUN for none."""
    if not values:
        return NOT_RUN
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.fmean(values):.{digits}g} ± {statistics.stdev(values):.2g} (n={len(values)})"


def passkey_accuracy(run: RunResults, target: int | None, metric: str = "exact") -> float | None:
    """Passkey accuracy (``exact`` match of the generated key, or ``likelihood`` ranking) at the
    evaluated length nearest ``target`` (None: every evaluated length), averaged over depths and key counts,
    from eval/passkey.json ({"lengths": [...], "grid": {"<n>_keys": {metric: [length][depth]}}}, a null
    row for a (length, keys) pair eval.py skipped: left out, as is a key count with no row at the chosen
    lengths); None when absent or unreadable, or when nothing ran there."""
    data = run.eval_result("passkey")
    try:
        lengths = [int(t) for t in data["lengths"]]
        chosen = range(len(lengths)) if target is None else \
            [min(range(len(lengths)), key=lambda b: (abs(lengths[b] - target), lengths[b]))]
        per_keys = [statistics.fmean(float(a) for b in ran for a in grid[metric][b])
                    for grid in data["grid"].values()
                    if (ran := [b for b in chosen if grid[metric][b] is not None])]
        return statistics.fmean(per_keys)
    except (TypeError, KeyError, ValueError, IndexError, statistics.StatisticsError):
        return None


def extrapolation_ratio(run: RunResults, mode: str = "plain") -> float | None:
    """Perplexity at the longest evaluated length over that at the shortest, ``plain`` RoPE or ``ntk``
    scaling, from eval/length_extrapolation.json ({"lengths": {"<m>x": {"seq_len", mode: {"perplexity"}}}});
    None when absent, unreadable or with fewer than two lengths."""
    data = run.eval_result("length_extrapolation")
    try:
        entries = sorted(data["lengths"].values(), key=lambda e: int(e["seq_len"]))
        if len(entries) < 2:
            return None
        return float(entries[-1][mode]["perplexity"]) / float(entries[0][mode]["perplexity"])
    except (TypeError, KeyError, ValueError, AttributeError, ZeroDivisionError):
        return None


def nonzeros_slope(run: RunResults) -> float | None:
    """Least-squares slope of log(non-zeros per row) against log(length) over the probe lengths
    (0 for O(1), 1 for dense causal attention); None with fewer than two lengths."""
    points = [(math.log(s["length"]), math.log(s["nonzeros_per_row"] + 1e-9))
              for s in (run.summary or {}).get("lengths", [])]
    if len(points) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def _at_length(key: str) -> Callable[[RunResults], float | None]:
    def measure(run: RunResults) -> float | None:
        s = run.length_summary()
        return None if s is None or s.get(key) is None else float(s[key])
    return measure


def sink_ratio_max(run: RunResults) -> float | None:
    """The largest, over probe lengths, first-token ratio divided by the uniform H_T / T."""
    lengths = (run.summary or {}).get("lengths", [])
    ratios = [s["first_token_ratio"] / s["first_token_ratio_uniform"] for s in lengths
              if s["first_token_ratio"] == s["first_token_ratio"]]
    return max(ratios) if ratios else None


def _sink(key: str) -> Callable[[RunResults], float | None]:
    """A number of the summary's sink probe (``sink`` of analysis.attention), None when absent."""
    def measure(run: RunResults) -> float | None:
        value = (run.summary or {}).get("sink", {}).get(key)
        return None if value is None else float(value)
    return measure


sink_rate = _sink("sink_rate")
sink_rate_nonempty_rows = _sink("sink_rate_nonempty_rows")


def _at_longest(key: str) -> Callable[[RunResults], float | None]:
    def measure(run: RunResults) -> float | None:
        lengths = [s for s in (run.summary or {}).get("lengths", []) if s.get(key) is not None]
        return float(max(lengths, key=lambda s: s["length"])[key]) if lengths else None
    return measure


def learned_beta(run: RunResults) -> list[float]:
    """Every learnable β of the analysed checkpoint (per layer and head); [] when β is fixed."""
    if not run.config.attention.get("beta_learnable", False):
        return []
    flat = []
    for value in (run.summary or {}).get("beta_per_layer", []):
        flat += value if isinstance(value, list) else [value]
    return flat


@dataclass
class Claim:
    text: str
    paper: str
    measure: str
    cells: dict[str, str]
    holds: str


def _cells(groups: list[Group], measure: Callable[[RunResults], float | None]) -> dict[str, str]:
    return {g.label: fmt(_values(g, measure)) for g in groups}


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
    mean = lambda g, m: _mean(_values(g, m))  # noqa: E731

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

    sparsity = _at_length("sparsity")
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
                     "no non-zero weight", _cells(groups, _sink("empty_row_share")), "—"))
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
                     {g.label: (f"p={g.setting('attention.power')}: {fmt(_values(g, loss))}" if g in tda else "—")
                      for g in groups}, NOT_RUN if best is None else _verdict(best == 2.0)))

    low, high = (float(b) for b in tol.beta_range)
    out.append(Claim(f"learned β stays in [{low:g}, {high:g}]", "[0.5, 1]", "range of learned β over layers "
                     "and heads", {g.label: (f"{min(b):.3g} … {max(b):.3g}" if (b := sum(
                         (learned_beta(r) for r in g.runs), [])) else "—") for g in groups},
                     _per_group(tda, lambda g: None if not (b := sum((learned_beta(r) for r in g.runs), []))
                                else all(low <= v <= high for v in b))))

    consensus = _at_longest("consensus_per_row")
    out.append(Claim("consensus survivors (non-zero in both views) vanish as context grows", "vanish",
                     f"consensus survivors per row at the longest probe length (TDA ≤ {tol.consensus_max})",
                     _cells(groups, consensus),
                     _per_group(tda, lambda g: None if mean(g, consensus) is None
                                else mean(g, consensus) <= tol.consensus_max)))
    out.append(Claim("correlation of the two views' scores (information)", "0.075 → 0.123 in training",
                     "Pearson correlation of the views' raw scores (q̂·k̂ for TDA)",
                     _cells(groups, _at_length("score_correlation")), "—"))
    for mode, what in (("plain", "plain RoPE"), ("ntk", "NTK-aware RoPE scaling")):
        out.append(Claim(f"length extrapolation, {what} (information)", "—", "perplexity at the longest "
                         "evaluated length / at the training length", _cells(groups, lambda r, m=mode:
                                                                             extrapolation_ratio(r, m)), "—"))
    return out


def _num(value: float | None, digits: int = 3, percent: bool = False) -> str:
    if value is None or value != value:
        return "—"
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}g}"


def per_run_rows(runs: list[RunResults]) -> list[str]:
    """One markdown row per run: the numbers behind the claims, unaveraged (— where not measured)."""
    lines = ["| run | attention | val loss | exact zeros (train length / longest) | empty rows | non-zeros per row "
             "(train length / longest) | first-token ratio ÷ uniform (max) | sink rate (over non-empty rows) | ppl longest ÷ train "
             "(plain / NTK) | passkey (exact / likelihood) | mean λ | occupied tiles (train length / longest) |",
             "|" + "---|" * 12]
    at_train, at_longest = _at_length("sparsity"), _at_longest("sparsity")
    nz_train, nz_longest = _at_length("nonzeros_per_row"), _at_longest("nonzeros_per_row")
    tiles_train, tiles_longest = _at_length("tile_occupancy"), _at_longest("tile_occupancy")
    empty = _at_length("empty_row_share")
    for run in runs:
        lambdas = (run.summary or {}).get("lambda_per_layer") or []
        lam = statistics.fmean(lambdas) if lambdas else None
        pk = passkey_accuracy(run, None), passkey_accuracy(run, None, "likelihood")
        lines.append(" | ".join([
            f"| {run.name}", run.attention, _num(run.final_val_loss(), 4),
            f"{_num(at_train(run), percent=True)} / {_num(at_longest(run), percent=True)}",
            _num(empty(run), percent=True),
            f"{_num(nz_train(run), 4)} / {_num(nz_longest(run), 4)}", _num(sink_ratio_max(run)),
            f"{_num(sink_rate(run))} ({_num(sink_rate_nonempty_rows(run))})",
            f"{_num(extrapolation_ratio(run))} / {_num(extrapolation_ratio(run, 'ntk'))}",
            "—" if pk[0] is None else f"{_num(pk[0])} / {_num(pk[1])}", _num(lam),
            f"{_num(tiles_train(run), percent=True)} / {_num(tiles_longest(run), percent=True)}"]) + " |")
    return lines


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def _p(value: float | None) -> str:
    return "—" if value is None else (f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}")


def power_family(tda: list[Group]) -> list[Group]:
    """The TDA configurations that differ from one another in attention.power alone: of the families of groups equal
    in every other setting (analysis.results.families), the one with the most distinct powers (the first such on a
    tie). A configuration that also changes something else (norm_eps, the layout) says nothing about the power, so
    it is left out of the comparison."""
    return max(families(tda, ("attention.power",)),
               key=lambda f: len({float(g.setting("attention.power") or 2.0) for g in f}), default=[])


def context(group: Group) -> tuple[tuple[str, str], ...]:
    """The settings naming ``group`` that are not the attention's (the model's size, the data, the schedule): a
    configuration is compared with softmax, or with its attention's default, only under the same ones."""
    return tuple((k, v) for k, v in group.parts if not k.startswith("attention."))


def default_group(groups: list[Group], attention: str,
                  setting: tuple[tuple[str, str], ...] = ()) -> Group | None:
    """The configuration of ``attention`` with no attention setting of its own, under the non-attention settings
    ``setting`` (context(); () for the studies' common ones)."""
    return next((g for g in groups if g.attention == attention and g.parts == setting), None)


def reference_group(groups: list[Group], setting: tuple[tuple[str, str], ...] = ()) -> Group | None:
    """The softmax configuration a configuration under the non-attention settings ``setting`` is compared with:
    softmax's default under them, else the first softmax group under them, else None (a model size without a
    softmax run has no reference: comparing it with another size's softmax would measure the size)."""
    return default_group(groups, "softmax", setting) or next(
        (g for g in groups if g.attention == "softmax" and context(g) == setting), None)


def softmax_for(groups: list[Group], group: Group) -> Group | None:
    """The softmax configuration ``group`` is compared with: reference_group under ``group``'s own non-attention
    settings (the same model size and data)."""
    return reference_group(groups, context(group))


def _delta(v: list[float], b: list[float]) -> str:
    """The mean of ``v`` against the mean of ``b``, in percent, signed."""
    return f"{100 * (statistics.fmean(v) / statistics.fmean(b) - 1):+.2f}"


def loss_table(groups: list[Group]) -> list[str]:
    """Markdown lines: per configuration (runs equal up to the seed) the validation loss over seeds, mean ± sample
    standard deviation, its difference from softmax's mean in percent, Welch's two-sided p-value against
    softmax's seeds (analysis.stats.welch; both need two or more seeds) and Holm's adjustment over every
    configuration compared, then the attention measures at the training length (mean over seeds): exact-zero
    share, empty-row share, Gu et al.'s sink rate. Each configuration's reference is softmax under its own
    non-attention settings (reference_group: the same model size and data); none: Δ and p are —."""
    loss = RunResults.final_val_loss
    values = [_values(g, loss) for g in groups]
    refs = [softmax_for(groups, g) for g in groups]
    ref_values = [values[groups.index(ref)] if ref else [] for ref in refs]
    tests = [welch(v, r).p if g is not ref and len(v) > 1 and len(r) > 1 else None
             for g, v, ref, r in zip(groups, values, refs, ref_values)]
    lines = ["| configuration | seeds | val loss mean ± std | Δ vs softmax (%) | p (Welch) | p (Holm) | exact zeros "
             "| empty rows | sink rate |", "|" + "---|" * 9]
    sparsity, empty = _at_length("sparsity"), _at_length("empty_row_share")
    for g, v, ref, r, p, p_holm in zip(groups, values, refs, ref_values, tests, holm(tests)):
        if g is ref:
            delta = "reference"
        elif v and r:
            delta = _delta(v, r)
        else:
            delta = "—"
        lines.append(" | ".join([f"| {g.label}", str(len(g.runs)), _mean_std(v), delta, _p(p), _p(p_holm),
                                 _num(_mean(_values(g, sparsity)), percent=True),
                                 _num(_mean(_values(g, empty)), percent=True),
                                 _num(_mean(_values(g, sink_rate)))]) + " |")
    return lines


def recipe_table(groups: list[Group]) -> list[str]:
    """Markdown lines: every configuration that changes an attention's defaults against that attention's default
    configuration under the same non-attention settings (the question of an ablation: does the recipe beat the
    variant as shipped, at that model size?): the mean's
    difference in percent, Welch's two-sided p-value (both with two or more seeds) and Holm's adjustment over the
    comparisons made. [] when no attention has both a default and a recipe."""
    loss = RunResults.final_val_loss
    rows = []
    for g in groups:
        base = default_group(groups, g.attention, context(g))
        if base is None or base is g:
            continue
        v, b = _values(g, loss), _values(base, loss)
        p = welch(v, b).p if len(v) > 1 and len(b) > 1 else None
        delta = _delta(v, b) if v and b else "—"
        rows.append((g, base, v, b, delta, p))
    if not rows:
        return []
    lines = ["| configuration | seeds | val loss mean ± std | default | its seeds | its mean ± std "
             "| Δ vs default (%) | p (Welch) | p (Holm) |", "|" + "---|" * 9]
    for (g, base, v, b, delta, p), p_holm in zip(rows, holm([r[-1] for r in rows])):
        lines.append(" | ".join([f"| {g.label}", str(len(g.runs)), _mean_std(v), base.label, str(len(base.runs)),
                                 _mean_std(b), delta, _p(p), _p(p_holm)]) + " |")
    return lines


def _recipes(groups: list[Group]) -> str:
    lines = recipe_table(groups)
    if not lines:
        return ""
    return ("\n\n## Recipes against their attention's default, over seeds\n\nEach configuration that changes an "
            "attention's defaults against that attention's default configuration with the same non-attention "
            "settings: does the recipe beat the variant "
            "as shipped? Δ: the difference of the means; p (Welch): Welch's two-sided t-test (two or more seeds "
            "each); p (Holm): adjusted over these comparisons. A recipe's own screening seed flatters it: confirm "
            "on fresh seeds.\n\n" + "\n".join(lines))


def _seed_losses(group: Group, seeds: Collection[int] | None = None) -> list[tuple[int, float]]:
    """(seed, validation loss) of each of ``group``'s runs whose seed is in ``seeds`` (None: every run) and that has
    a loss, ordered by seed."""
    pairs = ((int(run.config.seed), run.final_val_loss()) for run in group.runs)
    return sorted((s, v) for s, v in pairs if v is not None and (seeds is None or s in seeds))


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds)) if seeds else "none"


def confirmation_table(groups: list[Group], seeds: Sequence[int]) -> list[str]:
    """Markdown lines: every configuration that changes an attention's defaults (as recipe_table decides it) and has
    two or more runs with a validation loss at ``seeds``, the seeds held out from picking a recipe, tested on those
    runs alone: a winner picked on its screening seeds is flattered by them, so it is confirmed on seeds that did not
    pick it. Each is compared (a) with its attention's default under the same non-attention settings at the same
    fresh seeds (two or more of them, else —), and (b) with softmax under those settings (softmax_for) at the fresh
    seeds when it has two or more there, else at all of its seeds (softmax is not picked among, so any of its seeds
    is fair); the table names the seeds each side used. A softmax recipe's softmax is its default: it is compared
    once, in (a). Δ: the difference of the means in percent; p (Welch): Welch's two-sided test; p (Holm): Holm's
    adjustment over every comparison of the table, (a) and (b) together as one family. [] when no configuration
    qualifies."""
    fresh = {int(s) for s in seeds}
    rows = []
    for g in groups:
        base = default_group(groups, g.attention, context(g))
        if base is None or base is g:
            continue
        own = _seed_losses(g, fresh)
        if len(own) < 2:
            continue
        v, at_base = [x for _, x in own], _seed_losses(base, fresh)
        b_seeds, b = [s for s, _ in at_base], [x for _, x in at_base]
        p_base = welch(v, b).p if len(b) > 1 else None
        ref = softmax_for(groups, g)
        if ref is None or ref is base:
            soft, soft_note, p_soft = [], "—" if ref is None else "(the default)", None
        else:
            at = _seed_losses(ref, fresh)
            every = len(at) < 2
            at = _seed_losses(ref) if every else at
            soft = [x for _, x in at]
            soft_note = _seed_list([s for s, _ in at]) + (" (all: < 2 fresh)" if every else "")
            p_soft = welch(v, soft).p if len(soft) > 1 else None
        rows.append((g, own, v, base, b_seeds, b, p_base, ref, soft, soft_note, p_soft))
    if not rows:
        return []
    adjusted = holm([r[6] for r in rows] + [r[-1] for r in rows])   # one family: both kinds of comparison
    lines = ["| configuration | fresh seeds | val loss mean ± std | default | default's seeds | default's mean ± std "
             "| Δ vs default (%) | p (Welch) | p (Holm) | softmax | softmax's seeds | softmax's mean ± std "
             "| Δ vs softmax (%) | p (Welch) | p (Holm) |", "|" + "---|" * 15]
    for i, (g, own, v, base, b_seeds, b, p_base, ref, soft, soft_note, p_soft) in enumerate(rows):
        lines.append(" | ".join([
            f"| {g.label}", _seed_list([s for s, _ in own]), _mean_std(v),
            base.label, _seed_list(b_seeds), _mean_std(b), "—" if p_base is None else _delta(v, b), _p(p_base),
            _p(adjusted[i]),
            "—" if ref is None else ref.label, soft_note, _mean_std(soft), "—" if p_soft is None else _delta(v, soft),
            _p(p_soft), _p(adjusted[len(rows) + i])]) + " |")
    return lines


def _confirmation(groups: list[Group], seeds: Sequence[int]) -> str:
    if not seeds:
        return ""
    named = _seed_list(list(seeds))
    lines = confirmation_table(groups, seeds)
    head = "\n\n## Confirmation on fresh seeds\n\n"
    if not lines:
        return (head + f"No configuration that changes an attention's defaults has two or more runs with a "
                f"validation loss at the fresh seeds {named}: nothing to confirm.")
    return (head + f"Each configuration that changes an attention's defaults, on its runs at the seeds {named} "
            "alone (`confirm_seeds`: seeds held out from picking a recipe, so they do not flatter the winner), "
            "against its attention's default at the same seeds (two or more runs each, else —) and against softmax "
            "with the same non-attention settings, at those seeds where softmax has two or more of them, else at all "
            "of its seeds (softmax is not picked among; the column says which were used). Δ: the difference of the "
            "means; p (Welch): Welch's two-sided t-test; p (Holm): adjusted over every comparison of this table, "
            "against the default and against softmax together, as one family.\n\n" + "\n".join(lines))


def parse_confirm_seeds(value) -> list[int]:
    """``confirm_seeds`` of the config as a list of ints ([] when unset or empty); ValueError naming it when it is
    not a list of integer seeds (a typo must not quietly drop the section)."""
    if value is None:
        return []
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise ValueError(f"confirm_seeds must be a list of integer seeds, e.g. [3,4,5]; got {value!r}")
    return list(value)


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
            "(means over seeds).\n\n" + "\n".join(loss_table(groups)) + _recipes(groups)
            + _confirmation(groups, confirm_seeds) + "\n\n## Per run\n\n"
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
