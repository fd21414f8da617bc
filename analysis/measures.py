"""What each run's files say, as numbers: the measures the claims and the comparisons read (validation loss is
RunResults.final_val_loss), and a measure's values over a configuration's runs. Each measure takes a RunResults and
returns a float, or None where the run lacks it (an evaluation task or analysis not run, an unreadable file)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from analysis.results import Group, RunResults


def group_values(group: Group, measure: Callable[[RunResults], float | None]) -> list[float]:
    """``measure`` of each of ``group``'s runs that has it (None and NaN left out)."""
    return [v for v in (measure(run) for run in group.runs) if v is not None and not math.isnan(v)]


def mean_or_none(xs: list[float]) -> float | None:
    """The mean of ``xs``; None for none."""
    return statistics.fmean(xs) if xs else None

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


def at_length(key: str) -> Callable[[RunResults], float | None]:
    """The measure: the summary's ``key`` at the probe length nearest the training length."""
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


def sink_measure(key: str) -> Callable[[RunResults], float | None]:
    """A number of the summary's sink probe (``sink`` of analysis.attention), None when absent."""
    def measure(run: RunResults) -> float | None:
        value = (run.summary or {}).get("sink", {}).get(key)
        return None if value is None else float(value)
    return measure


sink_rate = sink_measure("sink_rate")
sink_rate_nonempty_rows = sink_measure("sink_rate_nonempty_rows")


def at_longest(key: str) -> Callable[[RunResults], float | None]:
    """The measure: the summary's ``key`` at the longest probe length that has it."""
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
