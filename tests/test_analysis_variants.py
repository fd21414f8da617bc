"""The analysis on the sink-free baselines (sigmoid, softpick, sink_softmax, ssmax): tiny trained runs go
through ``python -m analysis.attention``; their ratios are taken over rows normalised by Σ|w| (SPEC §4),
which matters for the variants whose rows do not sum to one; the claims table has a column for each."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis.attention import analyse, held_out
from analysis.probe import attention_maps
from analysis.report import make_report
from model.checkpoint import load_run

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ["sigmoid", "softpick", "sink_softmax", "ssmax"]
ANALYSIS = ["lengths=[64]", "sequences=2", "sink_sequences=2", "map_tokens=16"]


def compose(config: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


@pytest.fixture(scope="module")
def runs(train_run):
    """One analysed tiny run per baseline; sigmoid's through the command line, the others in-process."""
    made = {}
    for name in BASELINES:
        run = Path(train_run(f"name=baseline_{name}", f"attention={name}", "trainer.max_steps=4"))
        if name == "sigmoid":
            result = subprocess.run([sys.executable, "-m", "analysis.attention", f"run_dir={run}", *ANALYSIS],
                                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                                    text=True, timeout=300)
            assert result.returncode == 0, result.stderr
        else:
            analyse(compose("analysis", [f"run_dir={run}", *ANALYSIS]))
        made[name] = run
    return made


@pytest.mark.parametrize("name", BASELINES)
def test_first_token_ratio_is_over_rows_normalised_by_their_absolute_sum(runs, name):
    summary = json.loads((runs[name] / "analysis" / "summary.json").read_text())
    assert summary["attention"] == name
    measured = summary["lengths"][0]
    model, run_cfg, _ = load_run(runs[name])
    idx = held_out(run_cfg, 64, 2)
    normalised, raw = [], []
    for layer in range(len(model.blocks)):
        w = attention_maps(model, idx, layer)["combined"].double()
        total = w.abs().sum(-1)
        normalised.append((w[..., 0].abs() / total)[total > 0])
        raw.append(w[..., 0][total > 0])
    expected = float(torch.cat(normalised).mean())
    assert measured["first_token_ratio"] == pytest.approx(expected, rel=1e-6)
    if name in ("sigmoid", "sink_softmax"):   # rows that do not sum to one: normalising changes the ratio
        assert abs(float(torch.cat(raw).mean()) - expected) > 1e-3 * expected
    if name == "softpick":                    # exact zeros (scores ≤ 0) are counted
        assert measured["sparsity"] > 0.1
    else:
        assert measured["nonzeros_per_row"] == pytest.approx((64 + 1) / 2)
    scalars = {"sigmoid": "sigmoid_bias", "sink_softmax": "sink_logit", "ssmax": "ssmax_scale"}
    if name in scalars:
        per_layer = summary[f"{scalars[name]}_per_layer"]
        assert len(per_layer) == len(model.blocks) and all(len(heads) == 4 for heads in per_layer)


def test_claims_table_has_a_column_per_baseline(runs, tmp_path):
    out = tmp_path / "claims.md"
    text = make_report(compose("analysis_report", [f"runs=[{','.join(str(runs[n]) for n in BASELINES)}]",
                                                    f"out={out}"]))
    header, _, *rows = [line for line in text.split("## Per run")[0].splitlines() if line.startswith("|")]
    assert [c.strip() for c in header.split("|")[4:-2]] == BASELINES
    sink = next(row for row in rows if row.startswith("| no attention sink: first-token ratio"))
    cells = [c.strip() for c in sink.split("|")[4:-2]]
    assert len(cells) == len(BASELINES) and all(float(c) > 0 for c in cells)
