"""End to end on tiny trained runs: analysis.attention, analysis.figures and analysis.report write every
file they promise; bad input gets a one-line error."""
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from analysis.attention import analyse
from analysis.metrics import METRICS_VERSION
from analysis.draw.common import run_styles
from analysis.figures import make_figures
from analysis.report import make_report
from analysis.results import load_results

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [64, 128]
FIGURES = ["sparsity_by_layer", "first_token_ratio", "sink_by_layer", "dispersion", "lambda_by_layer", "loss_curves",
           "loss_by_configuration", "loss_vs_empty_rows", "theory_check"]


def compose(config: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def analysis_cfg(run_dir, *extra):
    return compose("analysis", [f"run_dir={run_dir}", f"lengths=[{','.join(map(str, LENGTHS))}]", "sequences=2",
                                "sink_sequences=4", "map_tokens=32", *extra])


@pytest.fixture(scope="module")
def runs(train_run):
    made = {}
    for name in ("tda", "softmax"):
        run = train_run(f"name=analysis_{name}", f"attention={name}", "trainer.max_steps=6")
        analyse(analysis_cfg(run))
        made[name] = Path(run)
    return made


def test_attention_writes_every_file(runs):
    heads_of = {"tda": 2, "softmax": 4}     # paired TDA: n_head / 2 differential heads
    for name, run in runs.items():
        out = run / "analysis"
        summary = json.loads((out / "summary.json").read_text())
        assert [s["length"] for s in summary["lengths"]] == LENGTHS
        assert summary["attention"] == name and summary["sink"]["length"] == 64
        assert summary["metrics_version"] == METRICS_VERSION
        sink = summary["sink"]
        assert 0.0 <= sink["sink_rate"] <= 1.0 and 0.0 <= sink["empty_row_share"] <= 1.0
        assert sink["triples"] == 4 * 2 * heads_of[name]                  # sequences × layers × heads
        if name == "softmax":   # no empty rows: both denominators agree
            assert sink["empty_row_share"] == 0.0 and sink["sink_rate_nonempty_rows"] == sink["sink_rate"]
        for s in summary["lengths"]:
            assert 0.0 <= s["sparsity"] <= 1.0 and len(s["sparsity_per_layer"]) == 2
            assert ("view_correlation" in s) == (name == "tda")
        assert ("lambda_per_layer" in summary) == (name == "tda")
        if name == "softmax":   # dense: no exact zeros, every causal entry non-zero
            assert summary["lengths"][0]["sparsity"] == 0.0
            assert summary["lengths"][0]["nonzeros_per_row"] == pytest.approx((64 + 1) / 2)
        with gzip.open(out / "rows.csv.gz", "rt") as f:
            rows = f.read().splitlines()
        assert len(rows) == 1 + 2 * sum(LENGTHS)
        values = [float(x) for row in rows[1:] for x in row.split(",")[3:] if x and x != "nan"]
        assert values and all(float(f"{x:.6g}") == x for x in values)  # kept to six significant digits
        assert any(len(x.replace(".", "").lstrip("0")) > 3 for row in rows[1:] for x in row.split(",")[3:])
        assert len((out / "dispersion.csv").read_text().splitlines()) == 1 + 2 * len(LENGTHS)
        views = 3 if name == "tda" else 2
        heads = 2 if name == "tda" else 4
        assert len((out / "sparsity.csv").read_text().splitlines()) == 1 + len(LENGTHS) * 2 * heads * views
        with np.load(out / "attention_maps.npz") as maps:
            assert sorted(maps.files) == ["L0H0", "L1H0"] and maps["L0H0"].shape == (32, 32)


def test_figures_open_as_images(runs, tmp_path):
    import matplotlib.image

    cfg = compose("analysis_figures", [f"runs=[{runs['tda']},{runs['softmax']}]", f"out={tmp_path}",
                                       "theory.max_position=128", "theory.trials=4"])
    paths = make_figures(cfg)
    stems = FIGURES + [f"{kind}_{run.name}" for run in runs.values()      # diagnostics: logged while training
                       for kind in ("attention_maps", "training_diagnostics")]
    assert sorted(p.name for p in paths) == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    for path in paths:
        if path.suffix == ".png":
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        else:
            assert path.read_bytes()[:5] == b"%PDF-"


def test_report_groups_seeds_and_reads_eval_results(runs, tmp_path):
    copies = {}
    for name, run in runs.items():
        copies[name] = tmp_path / run.name
        shutil.copytree(run, copies[name], ignore=shutil.ignore_patterns("checkpoints"))
    seed = tmp_path / "analysis_tda_seed1"
    shutil.copytree(copies["tda"], seed)
    config = OmegaConf.load(seed / "config.yaml")
    config.seed, config.name = 1, seed.name
    OmegaConf.save(config, seed / "config.yaml")
    for run, accuracy in ((copies["tda"], 0.5), (seed, 0.25), (copies["softmax"], 0.125)):
        (run / "eval").mkdir(exist_ok=True)
        grid = [[0.0, 0.0], [accuracy, accuracy]]      # lengths × depths
        passkey = {"step": 6, "lengths": [1024, 4096], "depths": [0.0, 0.5],
                   "grid": {"1_keys": {"exact": grid, "likelihood": grid}, "2_keys": {"exact": grid}}}
        (run / "eval" / "passkey.json").write_text(json.dumps(passkey))
        lengths = {f"{m}x": {"multiple": m, "seq_len": 64 * m, "plain": {"perplexity": 10.0 * m},
                             "ntk": {"perplexity": 10.0}} for m in (1, 4)}
        (run / "eval" / "length_extrapolation.json").write_text(json.dumps({"train_len": 64, "lengths": lengths}))
    out = tmp_path / "claims.md"
    text = make_report(compose("analysis_report", [f"runs=[{copies['tda']},{seed},{copies['softmax']}]",
                                                    f"out={out}"]))
    assert out.read_text() == text
    claims_part, per_run_part = text.split("## Per run")
    claims_part, loss_part = claims_part.split("## Validation loss against softmax")
    assert "| tda | 2 |" in loss_part and "| softmax | 1 | " in loss_part
    lines = [line for line in claims_part.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[4:6] == [" tda ", " softmax "]
    assert len(lines) == 2 + 14
    per_run = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
               for line in [row for row in per_run_part.splitlines() if row.startswith("|")][2:]}
    assert sorted(per_run) == sorted(["analysis_tda", "analysis_tda_seed1", "analysis_softmax"])
    tda, softmax = per_run["analysis_tda"], per_run["analysis_softmax"]
    assert tda[0] == "tda" and softmax[2] == "0.0% / 0.0%"      # dense: no exact zeros
    assert tda[7] == "4 / 1" and softmax[7] == "4 / 1"          # perplexity ratio plain / NTK
    # passkey over both lengths; no likelihood grid for 2 keys in these files -> —
    assert tda[8] == "0.25 / —" and per_run["analysis_tda_seed1"][8] == "0.125 / —"
    assert tda[9] != "—" and softmax[9] == "—"                  # mean λ only for TDA
    assert softmax[10] == "100.0% / 100.0%"                      # dense: every causal tile occupied
    assert tda[10].count("%") == 2
    passkey = next(line for line in lines if line.startswith("| passkey"))
    assert "0.375 ± 0.18 (n=2)" in passkey and "| 0.125 |" in passkey and passkey.endswith("| yes |")
    plain = next(line for line in lines if line.startswith("| length extrapolation, plain"))
    ntk = next(line for line in lines if line.startswith("| length extrapolation, NTK"))
    assert "| 4 ± 0 (n=2) | 4 |" in plain and "| 1 ± 0 (n=2) | 1 |" in ntk
    sparsity = next(line for line in lines if line.startswith("| TDA has"))
    assert "(n=2)" in sparsity and sparsity.rstrip(" |").split("|")[-1].strip() in ("yes", "no")
    assert "analysis_tda, analysis_tda_seed1" in text
    # the figures colour and label by the same grouping: seeds share a colour and one legend entry
    styles = run_styles([load_results(p) for p in (copies["tda"], seed, copies["softmax"])])
    assert styles["analysis_tda"]["color"] == styles["analysis_tda_seed1"]["color"] != styles["analysis_softmax"]["color"]
    assert [styles[n]["label"] for n in ("analysis_tda", "analysis_tda_seed1", "analysis_softmax")] == [
        "tda (2 seeds)", "_nolegend_", "softmax"]


def test_report_and_figures_refuse_mixed_metrics_versions(runs, tmp_path):
    """A summary without metrics_version is version 1 (α_0 over non-empty rows): beside a current one the
    report and the figures refuse with one line naming both files, their versions and the command."""
    copies = {}
    for name, run in runs.items():
        copies[name] = tmp_path / run.name
        shutil.copytree(run, copies[name], ignore=shutil.ignore_patterns("checkpoints"))
    old = copies["tda"] / "analysis" / "summary.json"
    summary = json.loads(old.read_text())
    del summary["metrics_version"]
    old.write_text(json.dumps(summary))
    current = copies["softmax"] / "analysis" / "summary.json"
    report = compose("analysis_report", [f"runs=[{copies['tda']},{copies['softmax']}]", f"out={tmp_path / 'c.md'}"])
    with pytest.raises(ValueError) as err:
        make_report(report)
    message = str(err.value)
    assert "\n" not in message
    assert f"{old} (version 1)" in message and f"{current} (version {METRICS_VERSION})" in message
    assert message.endswith(f"python -m analysis.attention run_dir=<run> for {copies['tda']}")
    assert not (tmp_path / "c.md").exists()
    with pytest.raises(ValueError, match="different metrics versions"):
        make_figures(compose("analysis_figures", [f"runs=[{copies['tda']},{copies['softmax']}]",
                                                  f"out={tmp_path / 'figures'}", "figures=[sink_by_layer]"]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "analysis.report", f"runs=[{copies['tda']},{copies['softmax']}]",
                             f"out={tmp_path / 'c.md'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "(version 1)" in result.stderr
    with pytest.raises(ValueError, match="version 1"):     # old summaries alone are refused too
        make_report(compose("analysis_report", [f"runs=[{copies['tda']}]", f"out={tmp_path / 'c.md'}"]))
    summary["metrics_version"] = METRICS_VERSION           # once re-analysed, the two are reported together
    old.write_text(json.dumps(summary))
    assert "| softmax |" in make_report(report)


def test_bad_input_gets_one_line_errors(runs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "analysis.attention", f"run_dir={tmp_path / 'nope'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: run directory")
    empty = tmp_path / "no_checkpoint"
    empty.mkdir()
    shutil.copy(runs["tda"] / "config.yaml", empty / "config.yaml")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint") as err:
        analyse(analysis_cfg(empty))
    with pytest.raises(ValueError, match="beyond the model") as too_long:
        analyse(analysis_cfg(runs["tda"], "lengths=[1024]"))
    with pytest.raises(FileNotFoundError, match="analysis.attention") as unanalysed:
        make_figures(compose("analysis_figures", [f"runs=[{empty}]", f"out={tmp_path}"]))
    with pytest.raises(ValueError, match="at least one run") as no_runs:
        make_report(compose("analysis_report", ["runs=[]", f"out={tmp_path / 'c.md'}"]))
    for exc in (err, too_long, unanalysed, no_runs):
        assert "\n" not in str(exc.value)


def test_figure_names_keep_dots_of_run_names(tmp_path):
    from analysis.draw.common import save
    from evaluation.plots import pyplot

    fig = pyplot().figure()
    paths = save(fig, tmp_path / "attention_maps_tda-beta0.5")
    assert [p.name for p in paths] == ["attention_maps_tda-beta0.5.png", "attention_maps_tda-beta0.5.pdf"]
    assert all(p.is_file() for p in paths)


def test_row_curves_read_from_the_gzipped_file_and_from_an_older_plain_one(tmp_path):
    """rows.csv.gz (written now) and rows.csv (written by older analyses, kept in results/) give the same curves;
    a run with neither raises FileNotFoundError, which the figures report as 'not kept'."""
    import math

    from analysis.attention import _write_csv
    from analysis.results import RunResults

    header = ["length", "layer", "position", "first_token_ratio", "consensus"]
    rows = [[64, layer, i, 1.0 / (i + 1) + layer, "" if i == 0 else 0.5 * i] for layer in range(2) for i in range(3)]
    rows.append([128, 0, 0, 9.0, 9.0])
    curves = {}
    for name in ("rows.csv.gz", "rows.csv"):
        run_dir = tmp_path / name / "analysis"
        run_dir.mkdir(parents=True)
        _write_csv(run_dir / name, header, rows)
        curves[name] = RunResults(name, run_dir.parent, OmegaConf.create({}), [], None).row_curves(64)
    assert (tmp_path / "rows.csv.gz" / "analysis" / "rows.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    new, old = curves["rows.csv.gz"], curves["rows.csv"]
    assert new["first_token_ratio"] == old["first_token_ratio"] == [[1.0, 0.5, 1 / 3], [2.0, 1.5, 1 + 1 / 3]]
    assert math.isnan(new["consensus"][1][0]) and new["consensus"][1][1:] == old["consensus"][1][1:] == [0.5, 1.0]
    with pytest.raises(FileNotFoundError):
        RunResults("none", tmp_path / "none", OmegaConf.create({}), [], None).row_curves(64)


@pytest.mark.parametrize("legends_outside", [False, True])
def test_a_figure_drawn_twice_from_the_same_data_is_the_same_file(tmp_path, legends_outside):
    """Kept figures (results/) change only when their data do: no creation date in the PDF, none in the PNG. Every
    figure of the project is written by evaluation.plots.save (analysis.figures with legends outside the axes)."""
    import time

    from evaluation.plots import pyplot, save

    files = []
    for i in range(2):
        fig, ax = pyplot().subplots()
        ax.plot([0, 1, 2], [1, 3, 2], label="a line")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
        files.append(save(fig, tmp_path / f"figure{i}", legends_outside=legends_outside))
        time.sleep(1.1)  # a creation date written to the second would differ
    for first, second in zip(*files):
        assert first.suffix == second.suffix and first.read_bytes() == second.read_bytes(), first.name


def test_png_figures_are_stored_with_a_palette(tmp_path):
    """save writes the PNG with a palette of at most 256 colours: the plot's colours survive (a red line stays
    pure red) and the file is smaller than matplotlib's own RGBA PNG of the same figure."""
    from PIL import Image

    from evaluation.plots import pyplot, save

    def draw():
        fig, ax = pyplot().subplots()
        ax.plot([0, 1, 2], [1, 3, 2], color="#ff0000", linewidth=4)
        ax.imshow(np.random.default_rng(0).random((20, 20)), extent=(0, 2, 1, 3), cmap="viridis")
        return fig

    png, _ = save(draw(), tmp_path / "figure")
    fig = draw()
    fig.tight_layout()
    fig.savefig(tmp_path / "rgba.png", dpi=150)
    with Image.open(png) as image:
        assert image.mode == "P" and len(image.getcolors(256)) <= 256
        assert (255, 0, 0) in {c for _, c in image.convert("RGB").getcolors(256)}
    assert png.stat().st_size < (tmp_path / "rgba.png").stat().st_size


def test_length_extrapolation_figure_averages_each_configuration_over_its_seeds(tmp_path):
    """extrapolation_curves groups runs as the loss table does and keeps every seed's perplexity at each evaluated
    length; the figure is drawn from them, and asking for it without any length_extrapolation.json is an error."""
    from analysis.draw.study import extrapolation_curves, length_extrapolation
    from analysis.results import RunResults

    def run(name, attention, seed, ppl):
        path = tmp_path / name
        (path / "eval").mkdir(parents=True)
        lengths = {f"{m}x": {"multiple": m, "seq_len": 64 * m, "plain": {"perplexity": ppl * m},
                             "ntk": {"perplexity": ppl * (1 + m) / 2}} for m in (1, 2, 4)}
        (path / "eval" / "length_extrapolation.json").write_text(json.dumps({"train_len": 64, "lengths": lengths}))
        config = OmegaConf.create({"seed": seed, "attention": {"name": attention}})
        return RunResults(name, path, config, [], None)

    runs = [run("a0", "softmax", 0, 10.0), run("a1", "softmax", 1, 12.0), run("b0", "sigmoid", 0, 20.0)]
    curves = extrapolation_curves(runs)
    assert [(label, attention) for label, attention, _ in curves] == [("softmax", "softmax"), ("sigmoid", "sigmoid")]
    softmax = curves[0][2]
    assert softmax["plain"] == {64: [10.0, 12.0], 128: [20.0, 24.0], 256: [40.0, 48.0]}
    assert softmax["ntk"][256] == [25.0, 30.0]
    paths = length_extrapolation(curves, tmp_path / "figure")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="no run holds eval/length_extrapolation.json"):
        length_extrapolation(extrapolation_curves([RunResults("c", tmp_path / "c", OmegaConf.create(
            {"attention": {"name": "tda"}}), [], None)]), tmp_path / "none")


def test_size_trend_follows_each_configuration_over_model_sizes(tmp_path):
    """size_trends groups runs equal but for model.n_layer / n_embd / n_head, keys each size by the parameters of
    the model its config builds, keeps every seed's loss and the runs' common token count, and leaves out a
    configuration run at one size only; the figure is drawn from them, and asking for it without two sizes is an
    error."""
    from analysis.draw.size import size_gaps, size_trend, size_trends
    from analysis.results import RunResults
    from model.gpt import GPT

    tiny = OmegaConf.to_container(OmegaConf.load("conf/model/tiny.yaml"))
    attention = {name: OmegaConf.to_container(OmegaConf.load(f"conf/attention/{name}.yaml"))
                 for name in ("softmax", "tda")}

    def run(name, attn, seed, layers, loss, power=None, heads=4):
        path = tmp_path / name
        (path / "eval").mkdir(parents=True)
        (path / "eval" / "val_loss.json").write_text(json.dumps({"loss": loss}))
        settings = {**attention[attn], **({"power": power} if power else {})}
        config = OmegaConf.create({"seed": seed, "attention": settings,
                                   "model": {**tiny, "n_layer": layers, "n_head": heads, "vocab_size": 50}})
        return RunResults(name, path, config, [{"step": 10, "tokens": 20480}], None)

    runs = [run("s2a", "softmax", 0, 2, 4.0), run("s2b", "softmax", 1, 2, 4.2), run("s3", "softmax", 0, 3, 3.8),
            run("t2", "tda", 0, 2, 4.3), run("t3", "tda", 0, 3, 4.1), run("t3p", "tda", 0, 3, 4.0, power=3.0),
            run("t2h", "tda", 1, 2, 4.5, heads=8), run("t2hb", "tda", 2, 2, 4.6, heads=8)]
    trends = size_trends(runs)
    params = {(a, n): GPT(OmegaConf.create({**tiny, "n_layer": n}), OmegaConf.create(attention[a]), 50)
              .num_parameters() for a in ("softmax", "tda") for n in (2, 3)}
    assert [(t.label, t.attention) for t in trends] == [("softmax", "softmax"), ("tda", "tda")]
    assert trends[0].points == {params["softmax", 2]: [4.0, 4.2], params["softmax", 3]: [3.8]}
    assert trends[0].sizes == {params["softmax", 2]: ("2", "128"), params["softmax", 3]: ("3", "128")}
    # at 2 layers TDA ran with 4 heads (one run) and 8 heads (two runs): the 8-head runs stand for that size
    params["tda", 2, 8] = GPT(OmegaConf.create({**tiny, "n_layer": 2, "n_head": 8}), OmegaConf.create(attention["tda"]),
                              50).num_parameters()
    assert trends[1].points == {params["tda", 2, 8]: [4.5, 4.6], params["tda", 3]: [4.1]}
    assert trends[0].tokens == 20480
    # the gap to softmax of the same depth × width, whatever the parameter counts (TDA's own parameters differ)
    assert size_gaps(trends) == [("tda", {params["tda", 2, 8]: pytest.approx(100 * (4.55 / 4.1 - 1)),
                                          params["tda", 3]: pytest.approx(100 * (4.1 / 3.8 - 1))})]
    assert size_gaps(trends[1:]) == []   # no softmax line: no gap
    paths = size_trend(trends, tmp_path / "figure")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="no configuration was run at two or more model sizes"):
        size_trend(size_trends(runs[:1] + runs[3:4]), tmp_path / "none")
    # heads alone are not sizes, even where the parameter count moves with them (TDA's per-head λ)
    assert size_trends([runs[3], runs[6]]) == []


def test_run_styles_tell_more_variants_than_colours_apart(tmp_path):
    """With more variants than the colour cycle's ten, each variant still gets its own (colour, line style); the
    seeds of one variant share it and only the first is labelled."""
    from analysis.draw.common import run_styles
    from analysis.results import RunResults

    runs = [RunResults(f"r{k}s{s}", tmp_path / f"r{k}s{s}",
                       OmegaConf.create({"seed": s, "attention": {"name": "softmax", "not_a_default": k}}), [], None)
            for k in range(23) for s in (0, 1)]
    styles = run_styles(runs)
    looks = {(styles[f"r{k}s0"]["color"], styles[f"r{k}s0"]["linestyle"]) for k in range(23)}
    assert len(looks) == 23
    assert all(styles[f"r{k}s1"]["color"] == styles[f"r{k}s0"]["color"]
               and styles[f"r{k}s1"]["label"] == "_nolegend_" for k in range(23))


def test_loss_vs_empty_rows_pairs_each_configurations_seeds(tmp_path):
    """empty_row_points pairs every seed's empty-row share at the training length with its validation loss, per
    configuration as the loss table groups them; a run without a summary is left out; the figure is drawn, and with
    no usable run it is an error."""
    from analysis.draw.study import empty_row_points, loss_vs_empty_rows
    from analysis.results import RunResults, group_runs

    def run(name, attention, seed, empty, loss, summary=True):
        path = tmp_path / name
        (path / "eval").mkdir(parents=True)
        (path / "eval" / "val_loss.json").write_text(json.dumps({"loss": loss}))
        config = OmegaConf.create({"seed": seed, "attention": {"name": attention}, "model": {"seq_len": 64}})
        summary = {"lengths": [{"length": 64, "empty_row_share": empty}]} if summary else None
        return RunResults(name, path, config, [], summary)

    runs = [run("s0", "softmax", 0, 0.0, 3.9), run("t0", "tda", 0, 0.8, 4.1), run("t1", "tda", 1, 0.7, 4.2),
            run("t2", "tda", 2, 0.5, 4.0, summary=False)]
    assert [(g.label, points) for g, points in empty_row_points(group_runs(runs))] == [
        ("softmax", [(0.0, 3.9)]), ("tda", [(0.8, 4.1), (0.7, 4.2)])]
    paths = loss_vs_empty_rows(runs, tmp_path / "figure")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="no run has both a validation loss and an analysis summary"):
        loss_vs_empty_rows(runs[3:], tmp_path / "none")
