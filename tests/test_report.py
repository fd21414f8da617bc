"""analysis.report's confirmation on fresh seeds (``confirm_seeds``): each recipe tested on its runs at seeds held out
from picking it, against its attention's default at those seeds and against softmax (at those seeds, else at all of
softmax's), Welch's p worked out here from exactly those losses and Holm's adjustment over both kinds of comparison
as one family; no section without the option, and a ValueError naming it for a value that is not a list of seeds.
Fake runs as in test_report_stats.py."""
import statistics

import pytest
from omegaconf import OmegaConf
from test_report_stats import fake_run

from analysis.comparisons import confirmation_table, pvalue
from analysis.report import claims, make_report, render
from analysis.results import group_runs, load_results
from analysis.stats import holm, welch

FRESH = [3, 4, 5]
# Seeds 0-2 picked the recipes (and flatter them: far lower losses); seeds 3-5 are fresh.
PLAN = {"softmax": {0: 3.98, 1: 3.99, 2: 3.97, 3: 4.01, 4: 3.96, 5: 4.00},
        "tda": {0: 4.13, 1: 4.16, 2: 4.12, 3: 4.15, 4: 4.11, 5: 4.14},
        "tda-beta0.5": {0: 3.50, 1: 3.52, 2: 3.49, 3: 4.10, 4: 4.08, 5: 4.12},
        "tda-clamp_st": {0: 3.60, 3: 4.135, 4: 4.16, 5: 4.12}}


def runs_of(root, plan):
    return [fake_run(root, config, seed, loss, 0.9) for config, losses in plan.items() for seed, loss in losses.items()]


def rows_of(lines):
    return {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in lines[2:]}


def config(runs, out, **extra):
    return OmegaConf.merge(OmegaConf.load("conf/analysis_report.yaml"),
                           {"runs": [str(r) for r in runs], "out": str(out), **extra})


def fresh(config):
    return [PLAN[config][s] for s in FRESH if s in PLAN[config]]


def test_a_recipe_is_tested_on_its_fresh_seeds_alone(tmp_path):
    """Means, Δ and Welch's p of the recipe against the default TDA and against softmax come from seeds 3-5 only:
    the screening seeds 0-2, a good deal lower, would change every number."""
    groups = group_runs([load_results(r) for r in runs_of(tmp_path, PLAN)])
    lines = confirmation_table(groups, FRESH)
    assert lines[0].count(" | ") == 14 and lines[1] == "|" + "---|" * 15
    rows = rows_of(lines)
    assert list(rows) == ["tda (beta=0.5)", "tda (lambda_mode=clamp_st)"]
    row = rows["tda (beta=0.5)"]
    beta, tda, soft = fresh("tda-beta0.5"), fresh("tda"), fresh("softmax")
    assert row[1:6] == ["3, 4, 5", f"{statistics.fmean(beta):.4f} ± {statistics.stdev(beta):.4f}", "tda", "3, 4, 5",
                        f"{statistics.fmean(tda):.4f} ± {statistics.stdev(tda):.4f}"]
    assert float(row[6]) == pytest.approx(100 * (statistics.fmean(beta) / statistics.fmean(tda) - 1), abs=0.005)
    assert row[7] == pvalue(welch(beta, tda).p)
    assert float(row[7]) == pytest.approx(welch(beta, tda).p, rel=0.05)
    assert row[7] != pvalue(welch(list(PLAN["tda-beta0.5"].values()), list(PLAN["tda"].values())).p)
    assert row[9:12] == ["softmax", "3, 4, 5", f"{statistics.fmean(soft):.4f} ± {statistics.stdev(soft):.4f}"]
    assert float(row[12]) == pytest.approx(100 * (statistics.fmean(beta) / statistics.fmean(soft) - 1), abs=0.005)
    assert row[13] == pvalue(welch(beta, soft).p) and row[12].startswith("+")   # on fresh seeds it loses to softmax


def test_holm_adjusts_over_both_kinds_of_comparison_as_one_family(tmp_path):
    """Four tests (two recipes, each against the default and against softmax): every Holm cell is holm() of the four
    raw p-values, not of each kind's two."""
    groups = group_runs([load_results(r) for r in runs_of(tmp_path, PLAN)])
    rows = rows_of(confirmation_table(groups, FRESH))
    order = ["tda (beta=0.5)", "tda (lambda_mode=clamp_st)"]
    raw = [welch(fresh(c), fresh("tda")).p for c in ("tda-beta0.5", "tda-clamp_st")] + \
          [welch(fresh(c), fresh("softmax")).p for c in ("tda-beta0.5", "tda-clamp_st")]
    assert [rows[c][7] for c in order] + [rows[c][13] for c in order] == [pvalue(p) for p in raw]
    adjusted = holm(raw)
    assert [rows[c][8] for c in order] + [rows[c][14] for c in order] == [pvalue(p) for p in adjusted]
    apart = holm(raw[:2]) + holm(raw[2:])
    assert [pvalue(p) for p in adjusted] != [pvalue(p) for p in apart]   # one family differs from two here


def test_softmax_falls_back_to_all_its_seeds_and_a_default_without_fresh_seeds_is_not_compared(tmp_path):
    """Softmax with one fresh seed is compared at all of its seeds, and the table says so; a default TDA with one
    fresh seed is not compared (—), so Holm counts the softmax test alone. A recipe with one fresh run has no row."""
    plan = {"softmax": {0: 3.98, 1: 3.99, 3: 4.01}, "tda": {0: 4.13, 1: 4.16, 2: 4.12, 3: 4.15},
            "tda-beta0.5": PLAN["tda-beta0.5"], "tda-clamp_st": {0: 3.60, 4: 4.16}}
    groups = group_runs([load_results(r) for r in runs_of(tmp_path, plan)])
    rows = rows_of(confirmation_table(groups, FRESH))
    assert list(rows) == ["tda (beta=0.5)"]
    row = rows["tda (beta=0.5)"]
    assert row[4:9] == ["3", "4.1500", "—", "—", "—"]
    soft = list(plan["softmax"].values())
    p = welch(fresh("tda-beta0.5"), soft).p
    assert row[9:12] == ["softmax", "0, 1, 3 (all: < 2 fresh)", f"{statistics.fmean(soft):.4f} ± "
                         f"{statistics.stdev(soft):.4f}"]
    assert row[13:] == [pvalue(p), pvalue(p)]   # the only test made: Holm leaves it


def test_the_report_has_the_section_only_with_confirm_seeds(tmp_path):
    """Without confirm_seeds (empty, or absent from the config) the report is the one render gives without seeds,
    with no confirmation section; with them the section follows the recipes, and seeds no recipe has two runs at
    are named in one line."""
    runs = runs_of(tmp_path, PLAN)
    groups = group_runs([load_results(r) for r in runs])
    plain = render(groups, claims(groups, OmegaConf.load("conf/analysis_report.yaml").tolerance))
    cfg = config(runs, tmp_path / "claims.md")
    assert list(cfg.confirm_seeds) == []
    assert make_report(cfg) == plain and "Confirmation on fresh seeds" not in plain
    del cfg["confirm_seeds"]
    assert make_report(cfg) == plain

    text = make_report(config(runs, tmp_path / "claims.md", confirm_seeds=FRESH))
    assert (tmp_path / "claims.md").read_text() == text
    recipes, confirm, per_run = (text.index(h) for h in ("## Recipes against", "## Confirmation on fresh seeds",
                                                         "## Per run"))
    assert recipes < confirm < per_run
    assert "\n".join(confirmation_table(groups, FRESH)) in text[confirm:per_run]
    assert "seeds 3, 4, 5" in text[confirm:per_run]

    none = make_report(config(runs, tmp_path / "claims.md", confirm_seeds=[7, 8]))
    section = none[none.index("## Confirmation on fresh seeds"):none.index("## Per run")].strip().splitlines()
    assert len(section) == 3 and "7, 8" in section[2] and "|" not in section[2]


@pytest.mark.parametrize("bad", ["abc", ["x"], [3, "4"], 3, [True, 4]])
def test_a_bad_confirm_seeds_is_a_value_error_naming_it(tmp_path, bad):
    runs = runs_of(tmp_path, {"softmax": PLAN["softmax"]})
    with pytest.raises(ValueError, match="confirm_seeds"):
        make_report(config(runs, tmp_path / "claims.md", confirm_seeds=bad))

