"""analysis.report's table of validation loss over seeds against softmax: configurations grouped up to the
seed and named by their settings off the attention's defaults, mean ± std, Δ, Welch's p and Holm's
adjustment (worked out here from the seeds' losses), attention measures averaged over seeds."""
import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from analysis.metrics import METRICS_VERSION
from analysis.comparisons import loss_table, power_family, recipe_table
from analysis.report import claims, make_report
from analysis.results import group_runs, load_results
from analysis.stats import welch

TDA = OmegaConf.to_container(OmegaConf.load("conf/attention/tda.yaml"))
LOSSES = {"softmax": [3.98, 3.99, 3.97], "tda": [4.13, 4.16, 4.12], "tda-beta0.5": [4.25, 4.20, 4.22],
          "tda-clamp_st": [4.10]}
SETTINGS = {"softmax": {"name": "softmax"}, "tda": TDA, "tda-beta0.5": {**TDA, "beta": 0.5},
            "tda-clamp_st": {**TDA, "lambda_mode": "clamp_st"}}


def fake_run(root, config, seed, loss, sparsity, heads=6):
    name = f"{config}-h{heads}-s{seed}"
    run = root / name
    (run / "analysis").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"name": name, "seed": seed, "attention": SETTINGS[config],
                                     "model": {"name": "small", "seq_len": 512, "n_head": heads},
                                     "trainer": {"max_steps": 1200}}),
                   run / "config.yaml")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1200, "loss": 3.0, "val_loss": loss + 0.5}) + "\n")
    (run / "eval").mkdir()
    (run / "eval" / "val_loss.json").write_text(json.dumps({"loss": loss}))     # preferred over metrics.jsonl
    summary = {"metrics_version": METRICS_VERSION, "sink": {"sink_rate": 0.1 * seed},
               "lengths": [{"length": 512, "sparsity": sparsity, "empty_row_share": sparsity / 2,
                            "first_token_ratio": 0.01, "first_token_ratio_uniform": 0.0133,
                            "nonzeros_per_row": 5.0}]}
    (run / "analysis" / "summary.json").write_text(json.dumps(summary))
    return run


def test_loss_table_against_softmax(tmp_path):
    runs = [fake_run(tmp_path, config, seed, loss, 0.0 if config == "softmax" else 0.9 + 0.01 * seed)
            for config, losses in LOSSES.items() for seed, loss in enumerate(losses)]
    groups = group_runs([load_results(r) for r in runs])
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in loss_table(groups)[2:]}
    assert list(rows) == ["softmax", "tda", "tda (beta=0.5)", "tda (lambda_mode=clamp_st)"]

    soft = LOSSES["softmax"]
    assert rows["softmax"][1:4] == ["3", f"{statistics.fmean(soft):.4f} ± {statistics.stdev(soft):.4f}", "reference"]
    assert rows["softmax"][4:] == ["—", "—", "0.0%", "0.0%", "0.1"]   # sink rates 0, 0.1, 0.2 over the seeds

    p_tda, p_beta = welch(LOSSES["tda"], soft).p, welch(LOSSES["tda-beta0.5"], soft).p
    low, high = sorted((p_tda, p_beta))
    holm_of = {low: min(1, 2 * low), high: max(min(1, 2 * low), high)}   # m = 2: 2·p_(1), then max(·, p_(2))
    for config, p in (("tda", p_tda), ("tda (beta=0.5)", p_beta)):
        key = config.replace(" (beta=0.5)", "-beta0.5")
        row = rows[config]
        delta = 100 * (statistics.fmean(LOSSES[key]) / statistics.fmean(soft) - 1)
        assert float(row[3]) == pytest.approx(delta, abs=0.005) and row[3].startswith("+")
        assert float(row[4]) == pytest.approx(p, rel=0.05) and float(row[5]) == pytest.approx(holm_of[p], rel=0.05)
        assert row[6] == "91.0%" and row[7] == "45.5%"                   # sparsity 0.90, 0.91, 0.92 over seeds
    assert 0 < p_tda < 0.05 and rows["tda"][4] != rows["tda"][5]       # the adjustment changes something
    one_seed = rows["tda (lambda_mode=clamp_st)"]
    assert one_seed[1:6] == ["1", "4.1000", f"{100 * (4.10 / statistics.fmean(soft) - 1):+.2f}", "—", "—"]


def test_report_writes_the_table(tmp_path):
    runs = [fake_run(tmp_path, config, seed, loss, 0.5) for config in ("softmax", "tda")
            for seed, loss in enumerate(LOSSES[config])]
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="analysis_report",
                      overrides=[f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'claims.md'}"])
    text = make_report(cfg)
    assert "## Validation loss against softmax, over seeds" in text and (tmp_path / "claims.md").read_text() == text
    assert "| configuration | seeds | val loss mean ± std | Δ vs softmax (%) | p (Welch) | p (Holm) |" in text


def test_claims_columns_and_loss_rows_share_one_label_per_configuration(tmp_path):
    """The claims table's columns, its loss table's rows and group_runs name a configuration the same way, by its
    settings off the attention's defaults; two configurations that would share a label (a setting no defaults
    file names) are told apart by what differs among them."""
    runs = [fake_run(tmp_path, config, 0, LOSSES[config][0], 0.9) for config in ("softmax", "tda", "tda-beta0.5")]
    SETTINGS["tda-unnamed"] = {**TDA, "not_a_default": 7}
    SETTINGS["tda-unnamed2"] = {**TDA, "not_a_default": 8}
    try:
        runs += [fake_run(tmp_path, c, 0, 4.2, 0.9) for c in ("tda-unnamed", "tda-unnamed2")]
        groups = group_runs([load_results(r) for r in runs])
        assert [g.label for g in groups] == ["softmax", "tda", "tda (beta=0.5)", "tda (not_a_default=7)",
                                             "tda (not_a_default=8)"]
        text = make_report(OmegaConf.merge(OmegaConf.load("conf/analysis_report.yaml"), {
            "runs": [str(r) for r in runs], "out": str(tmp_path / "claims.md")}))
        header = text.splitlines()[0].split(" | ")
        assert header[3:-1] == [g.label for g in groups]
        rows = [line.split(" | ")[0][2:] for line in loss_table(groups)[2:]]
        assert rows == [g.label for g in groups]
    finally:
        del SETTINGS["tda-unnamed"], SETTINGS["tda-unnamed2"]


def test_a_model_setting_most_runs_share_is_left_out_of_labels(tmp_path):
    """Beside runs at the model's usual heads, a softmax and a TDA run with model.n_head=12 are labelled by it and
    the others are not; the reference is then the plain softmax with its three seeds, so Welch's test runs. Where
    two values are equally common, every configuration shows its own."""
    runs = [fake_run(tmp_path, config, seed, loss, 0.9) for config in ("softmax", "tda")
            for seed, loss in enumerate(LOSSES[config])]
    runs += [fake_run(tmp_path, config, 0, LOSSES[config][0], 0.9, heads=12) for config in ("softmax", "tda")]
    groups = group_runs([load_results(r) for r in runs])
    assert [g.label for g in groups] == ["softmax", "tda", "softmax (model.n_head=12)", "tda (model.n_head=12)"]
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in loss_table(groups)[2:]}
    assert rows["softmax"][3] == "reference" and rows["softmax"][1] == "3"
    assert float(rows["tda"][4]) == pytest.approx(welch(LOSSES["tda"], LOSSES["softmax"]).p, rel=0.05)
    even = [fake_run(tmp_path / "even", "softmax", 0, 3.9, 0.0, heads=h) for h in (6, 12)]
    assert [g.label for g in group_runs([load_results(r) for r in even])] == [
        "softmax (model.n_head=6)", "softmax (model.n_head=12)"]


def test_settings_that_change_nothing_learned_do_not_split_a_configuration(tmp_path):
    """A seed run after trainer.profile_steps/profile_skip existed has them in its config, the older seeds do not;
    another seed saved checkpoints more often and ran compiled: its seeds are still one configuration, named as
    before. A different batch size does split it."""
    runs = [fake_run(tmp_path, config, seed, loss, 0.9) for config in ("softmax", "tda")
            for seed, loss in enumerate(LOSSES[config])]
    for run, extra in ((runs[1], {"profile_steps": 0, "profile_skip": 10}), (runs[4], {"profile_steps": 5}),
                       (runs[5], {"checkpoint_every": 7, "compile": "model", "some_key_added_later": 1}),
                       (runs[3], {"batch_size": 64})):
        config = OmegaConf.load(run / "config.yaml")
        config.trainer.update(extra)
        OmegaConf.save(config, run / "config.yaml")
    groups = group_runs([load_results(r) for r in runs])
    assert sorted((g.label, len(g.runs)) for g in groups) == [("softmax", 3), ("tda", 2),
                                                               ("tda (trainer.batch_size=64)", 1)]


def test_the_power_claim_compares_configurations_that_differ_in_the_power_alone(tmp_path):
    """p = 3 beats the default p = 2 while a p = 2 run with another norm_eps is the best of all: the verdict on
    "p = 2 is the best power" is no, as the norm_eps run says nothing about the power."""
    SETTINGS["tda-p3"] = {**TDA, "power": 3.0}
    SETTINGS["tda-eps"] = {**TDA, "norm_eps": 1e-5}
    try:
        runs = [fake_run(tmp_path, c, 0, loss, 0.9) for c, loss in (("softmax", 3.97), ("tda", 4.12),
                                                                     ("tda-p3", 4.08), ("tda-eps", 4.07))]
        groups = group_runs([load_results(r) for r in runs])
        tda = [g for g in groups if g.attention == "tda"]
        assert [g.label for g in power_family(tda)] == ["tda", "tda (power=3.0)"]
        text = make_report(OmegaConf.merge(OmegaConf.load("conf/analysis_report.yaml"), {
            "runs": [str(r) for r in runs], "out": str(tmp_path / "claims.md")}))
        row = next(line for line in text.splitlines() if line.startswith("| p = 2 is the best power"))
        assert row.rstrip(" |").endswith("no")
    finally:
        del SETTINGS["tda-p3"], SETTINGS["tda-eps"]


def test_recipes_against_their_attentions_default(tmp_path):
    """recipe_table compares each configuration that changes TDA's defaults with the default TDA (not with
    softmax): Δ of the means, Welch's p where both have two or more seeds, Holm over the comparisons made; the
    report prints it under its own heading."""

    runs = [fake_run(tmp_path, config, seed, loss, 0.9) for config, losses in LOSSES.items()
            for seed, loss in enumerate(losses)]
    groups = group_runs([load_results(r) for r in runs])
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in recipe_table(groups)[2:]}
    assert list(rows) == ["tda (beta=0.5)", "tda (lambda_mode=clamp_st)"]
    beta, tda = LOSSES["tda-beta0.5"], LOSSES["tda"]
    assert rows["tda (beta=0.5)"][3:6] == ["tda", "3", f"{statistics.fmean(tda):.4f} ± {statistics.stdev(tda):.4f}"]
    assert float(rows["tda (beta=0.5)"][6]) == pytest.approx(100 * (statistics.fmean(beta) / statistics.fmean(tda) - 1),
                                                             abs=0.005)
    p = welch(beta, tda).p
    assert float(rows["tda (beta=0.5)"][7]) == pytest.approx(p, rel=0.05)
    assert float(rows["tda (beta=0.5)"][8]) == pytest.approx(p, rel=0.05)   # one test made: Holm leaves it
    assert rows["tda (lambda_mode=clamp_st)"][7:] == ["—", "—"]               # one seed: no test
    text = make_report(OmegaConf.merge(OmegaConf.load("conf/analysis_report.yaml"), {
        "runs": [str(r) for r in runs], "out": str(tmp_path / "claims.md")}))
    assert "## Recipes against their attention's default, over seeds" in text
    assert recipe_table(group_runs([load_results(r) for r in runs[:3]])) == []   # softmax alone: nothing to compare


def test_every_comparison_is_made_at_the_same_model_size(tmp_path):
    """A configuration run at another model size (here model.n_head) is compared with softmax of that size, and a
    recipe with its attention's default of that size: never with another size's runs, whose loss differs by the
    size alone. A size without a softmax run has no reference (Δ and p are —, the parity claim is not judged)."""

    plan = {6: {"softmax": [3.98, 3.99, 3.97], "tda": [4.13, 4.16, 4.12]},
            12: {"softmax": [3.80, 3.82], "tda": [3.86, 3.87], "tda-beta0.5": [4.30]},
            8: {"tda-clamp_st": [3.50]}}
    runs = [fake_run(tmp_path, config, seed, loss, 0.9, heads=heads) for heads, configs in plan.items()
            for config, losses in configs.items() for seed, loss in enumerate(losses)]
    groups = group_runs([load_results(r) for r in runs])
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in loss_table(groups)[2:]}
    big, small = plan[12], plan[6]
    assert rows["softmax (model.n_head=12)"][3] == "reference" and rows["softmax"][3] == "reference"
    delta = 100 * (statistics.fmean(big["tda"]) / statistics.fmean(big["softmax"]) - 1)   # +1.44, not -2.9
    assert float(rows["tda (model.n_head=12)"][3]) == pytest.approx(delta, abs=0.005)
    assert float(rows["tda (model.n_head=12)"][4]) == pytest.approx(welch(big["tda"], big["softmax"]).p, rel=0.05)
    assert float(rows["tda"][3]) == pytest.approx(
        100 * (statistics.fmean(small["tda"]) / statistics.fmean(small["softmax"]) - 1), abs=0.005)
    assert rows["tda (lambda_mode=clamp_st, model.n_head=8)"][3:5] == ["—", "—"]   # no softmax at 8 heads
    recipes = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in recipe_table(groups)[2:]}
    assert list(recipes) == ["tda (beta=0.5, model.n_head=12)"]
    assert recipes["tda (beta=0.5, model.n_head=12)"][3] == "tda (model.n_head=12)"
    tolerance = OmegaConf.load("conf/analysis_report.yaml").tolerance
    parity = next(c for c in claims(groups, tolerance) if c.text.startswith("validation loss on par"))
    verdicts = dict(part.split(": ") for part in parity.holds.split("; "))
    assert verdicts["tda (model.n_head=12)"] == "no"       # 3.865 > 3.81 × 1.01 (against 3.98 it would pass)
    assert verdicts["tda"] == "no"
    assert verdicts["tda (beta=0.5, model.n_head=12)"] == "no"
    assert "tda (lambda_mode=clamp_st, model.n_head=8)" not in verdicts   # 3.50 beats every softmax: not judged
