"""analysis.figures' sink_by_layer draws, beside each layer's sink rate, the share of the sink probes' rows with no
non-zero weight (they count 0 in Gu et al.'s rate, so a rate of 0 with most rows empty means attention is off)."""
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import analysis.draw.attention as draw
from analysis.results import RunResults


def run(name: str, attention: str, rates: list[float], empty: list[float]) -> RunResults:
    summary = {"lengths": [{"length": 512, "first_token_ratio_per_layer": [0.02, 0.5, 0.01],
                            "first_token_ratio_uniform": 0.0133}],
               "sink": {"sink_rate_per_layer": rates, "empty_row_share_per_layer": empty, "length": 64,
                        "epsilon": 0.3}}
    config = OmegaConf.create({"attention": {"name": attention}, "model": {"seq_len": 512}})
    return RunResults(name, Path(name), config, [], summary)


def test_the_empty_rows_are_drawn_beside_the_sink_rate(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(draw, "save", lambda fig, stem: figures.append(fig) or [stem])
    runs = [run("tda-s0", "tda", [0.0, 0.0, 0.0], [0.99, 0.4, 0.7]),
            run("softmax-s0", "softmax", [0.1, 0.3, 0.0], [0.0, 0.0, 0.0])]
    draw.sink_by_layer(runs, tmp_path / "sink_by_layer")
    ratio_ax, rate_ax, empty_ax = figures[0].axes
    assert [list(line.get_ydata()) for line in rate_ax.get_lines()] == [[0.0, 0.0, 0.0], [0.1, 0.3, 0.0]]
    assert [list(line.get_ydata()) for line in empty_ax.get_lines()] == [[0.99, 0.4, 0.7], [0.0, 0.0, 0.0]]
    assert np.allclose(ratio_ax.get_lines()[0].get_ydata(), np.array([0.02, 0.5, 0.01]) / 0.0133)
