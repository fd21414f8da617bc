"""Configurations compared over seeds: which configuration each is held against (softmax of the same model size and
data, its attention's default), and the markdown tables of analysis.report that compare validation losses (Welch's
t-test, Holm-adjusted): every configuration against softmax, every recipe against its default, and a recipe on seeds
held out from picking it (``confirm_seeds``)."""
from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence

from omegaconf import ListConfig, OmegaConf

from analysis.measures import at_length, group_values, mean_or_none, sink_rate
from analysis.results import Group, RunResults, families
from analysis.stats import holm, welch


def num(value: float | None, digits: int = 3, percent: bool = False) -> str:
    if value is None or value != value:
        return "—"
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}g}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def pvalue(value: float | None) -> str:
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


def recipes(groups: list[Group]) -> list[tuple[Group, Group]]:
    """(recipe, its default) for every configuration that changes an attention's defaults and has that attention's
    default configuration under the same non-attention settings (the same model size and data) among ``groups``."""
    pairs = [(g, default_group(groups, g.attention, context(g))) for g in groups]
    return [(g, base) for g, base in pairs if base is not None and base is not g]


def _percent_change(v: list[float], b: list[float]) -> str:
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
    losses = [group_values(g, loss) for g in groups]
    refs = [softmax_for(groups, g) for g in groups]
    ref_losses = [losses[groups.index(ref)] if ref else [] for ref in refs]
    tests = [welch(v, r).p if g is not ref and len(v) > 1 and len(r) > 1 else None
             for g, v, ref, r in zip(groups, losses, refs, ref_losses)]
    lines = ["| configuration | seeds | val loss mean ± std | Δ vs softmax (%) | p (Welch) | p (Holm) | exact zeros "
             "| empty rows | sink rate |", "|" + "---|" * 9]
    sparsity, empty = at_length("sparsity"), at_length("empty_row_share")
    for g, v, ref, r, p, p_holm in zip(groups, losses, refs, ref_losses, tests, holm(tests)):
        if g is ref:
            delta = "reference"
        elif v and r:
            delta = _percent_change(v, r)
        else:
            delta = "—"
        lines.append(" | ".join([f"| {g.label}", str(len(g.runs)), _mean_std(v), delta, pvalue(p), pvalue(p_holm),
                                 num(mean_or_none(group_values(g, sparsity)), percent=True),
                                 num(mean_or_none(group_values(g, empty)), percent=True),
                                 num(mean_or_none(group_values(g, sink_rate)))]) + " |")
    return lines


def recipe_table(groups: list[Group]) -> list[str]:
    """Markdown lines: every configuration that changes an attention's defaults against that attention's default
    configuration under the same non-attention settings (``recipes``; the question of an ablation: does the recipe
    beat the variant as shipped, at that model size?): the mean's difference in percent, Welch's two-sided p-value
    (both with two or more seeds) and Holm's adjustment over the comparisons made. [] when no attention has both a
    default and a recipe."""
    loss = RunResults.final_val_loss
    rows = []
    for g, base in recipes(groups):
        v, b = group_values(g, loss), group_values(base, loss)
        p = welch(v, b).p if len(v) > 1 and len(b) > 1 else None
        delta = _percent_change(v, b) if v and b else "—"
        rows.append((g, base, v, b, delta, p))
    if not rows:
        return []
    lines = ["| configuration | seeds | val loss mean ± std | default | its seeds | its mean ± std "
             "| Δ vs default (%) | p (Welch) | p (Holm) |", "|" + "---|" * 9]
    for (g, base, v, b, delta, p), p_holm in zip(rows, holm([r[-1] for r in rows])):
        lines.append(" | ".join([f"| {g.label}", str(len(g.runs)), _mean_std(v), base.label, str(len(base.runs)),
                                 _mean_std(b), delta, pvalue(p), pvalue(p_holm)]) + " |")
    return lines


def recipes_section(groups: list[Group]) -> str:
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
    """Markdown lines: every recipe (``recipes``) that has two or more runs with a validation loss at ``seeds``, the
    seeds held out from picking a recipe, tested on those runs alone: a winner picked on its screening seeds is
    flattered by them, so it is confirmed on seeds that did not pick it. Each is compared (a) with its attention's
    default under the same non-attention settings at the same fresh seeds (two or more of them, else —), and (b)
    with softmax under those settings (softmax_for) at the fresh seeds when it has two or more there, else at all of
    its seeds (softmax is not picked among, so any of its seeds is fair); the table names the seeds each side used.
    A softmax recipe's softmax is its default: it is compared once, in (a). Δ: the difference of the means in
    percent; p (Welch): Welch's two-sided test; p (Holm): Holm's adjustment over every comparison of the table, (a)
    and (b) together as one family. [] when no configuration qualifies."""
    fresh = {int(s) for s in seeds}
    rows = []
    for g, base in recipes(groups):
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
            base.label, _seed_list(b_seeds), _mean_std(b), "—" if p_base is None else _percent_change(v, b),
            pvalue(p_base), pvalue(adjusted[i]),
            "—" if ref is None else ref.label, soft_note, _mean_std(soft),
            "—" if p_soft is None else _percent_change(v, soft), pvalue(p_soft),
            pvalue(adjusted[len(rows) + i])]) + " |")
    return lines


def confirmation_section(groups: list[Group], seeds: Sequence[int]) -> str:
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
