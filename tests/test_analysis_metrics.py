"""SPEC §4's metrics on constructed attention maps with known answers."""
import math

import pytest
import torch

from analysis.metrics import (LayerStats, harmonic, random_survivors, sink_rate, sink_summary, summarise,
                              survivor_bound, uniform_first_token_ratio)


def uniform_map(B: int, H: int, T: int) -> torch.Tensor:
    """Causal uniform attention: w_ij = 1/(i+1) for j ≤ i."""
    rows = torch.arange(T, dtype=torch.float32)[:, None]
    w = torch.tril(torch.ones(T, T)) / (rows + 1)
    return w.expand(B, H, T, T).clone()


def first_token_map(B: int, H: int, T: int, mass: float = 0.9) -> torch.Tensor:
    """Every row puts ``mass`` on token 0 and spreads the rest uniformly over keys 1 … i."""
    w = torch.zeros(T, T)
    w[0, 0] = 1.0
    for i in range(1, T):
        w[i, 0] = mass
        w[i, 1:i + 1] = (1 - mass) / i
    return w.expand(B, H, T, T).clone()


def stats_of(maps: dict[str, torch.Tensor], block: int | None = None) -> LayerStats:
    B, H, T, _ = maps["combined"].shape
    stats = LayerStats(T, H, 2 if "view2" in maps else 1)
    step = block or T
    for start in range(0, T, step):
        stop = min(T, start + step)
        stats.add(start, stop, {k: v[:, :, start:stop, :stop] for k, v in maps.items()})
    stats.end_batch()
    return stats


def single(w: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"combined": w, "view1": w}


def test_uniform_attention_first_token_ratio_and_no_sink():
    T = 64
    stats = stats_of(single(uniform_map(2, 3, T)))
    curves = stats.row_curves()
    i = torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(curves["first_token_ratio"], 1 / (i + 1))
    torch.testing.assert_close(curves["nonzeros"], i + 1)
    torch.testing.assert_close(curves["entropy"], torch.log(i + 1))
    torch.testing.assert_close(curves["top_weight"], 1 / (i + 1))
    summary = summarise([stats])
    assert summary["first_token_ratio"] == pytest.approx(harmonic(T) / T)
    assert summary["first_token_ratio_uniform"] == pytest.approx(harmonic(T) / T)
    assert summary["sparsity"] == 0.0 and summary["empty_row_share"] == 0.0
    sink = sink_summary([stats])
    assert sink["sink_rate"] == 0.0 and sink["triples"] == 6 and sink["empty_row_share"] == 0.0
    assert sink["alpha0_per_layer"][0] == pytest.approx(harmonic(T) / T)


def test_head_with_first_token_mass_is_a_sink():
    T = 64
    sink = sink_summary([stats_of(single(first_token_map(2, 2, T)))])
    assert sink["sink_rate"] == 1.0
    assert sink["alpha0_per_layer"][0] == pytest.approx((1 + 0.9 * (T - 1)) / T)
    mixed = torch.cat([first_token_map(1, 1, T), uniform_map(1, 1, T)], dim=1)
    assert sink_summary([stats_of(single(mixed))])["sink_rate"] == 0.5


def test_signed_rows_are_normalised_by_absolute_sum():
    w = torch.tensor([[1.0, 0, 0], [-0.5, 0.5, 0], [0.2, -0.2, 0.6]])[None, None]
    curves = stats_of({"combined": w, "view1": w.abs()}).row_curves()
    torch.testing.assert_close(curves["first_token_ratio"], torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64))
    torch.testing.assert_close(curves["top_weight"], torch.tensor([1.0, 0.5, 0.6], dtype=torch.float64))


def test_all_zero_rows_are_excluded_and_reported():
    T = 8
    w = uniform_map(1, 2, T)
    w[0, 0, [2, 5]] = 0.0          # head 0: two empty rows
    w[0, 1] = 0.0                  # head 1: every row empty (no α_0)
    stats = stats_of(single(w), block=3)
    curves = stats.row_curves()
    i = torch.arange(T, dtype=torch.float64)
    expected_empty = torch.full((T,), 0.5, dtype=torch.float64)
    expected_empty[[2, 5]] = 1.0
    torch.testing.assert_close(curves["empty_share"], expected_empty)
    assert torch.isnan(curves["first_token_ratio"][[2, 5]]).all()
    torch.testing.assert_close(curves["first_token_ratio"][[0, 1, 3]], 1 / (i[[0, 1, 3]] + 1))
    summary = summarise([stats])
    assert summary["empty_row_share"] == pytest.approx(10 / 16)
    full_rows = [r for r in range(T) if r not in (2, 5)]
    assert summary["first_token_ratio"] == pytest.approx(sum(1 / (r + 1) for r in full_rows) / len(full_rows))
    assert summary["nonzeros_per_row"] == pytest.approx(sum(r + 1 for r in full_rows) / 16)
    assert summary["nonzeros_per_nonempty_row"] == pytest.approx(sum(r + 1 for r in full_rows) / 6)
    on_key0 = sum(1 / (r + 1) for r in full_rows)     # normalised weight on key 0, summed over rows
    alpha = stats.alpha0()                             # Gu: over all T rows, empty rows counting 0
    assert alpha[0, 0] == pytest.approx(on_key0 / T) and alpha[0, 1] == 0.0
    old_rule = stats.alpha0(nonempty_rows=True)        # over non-empty rows only
    assert old_rule[0, 0] == pytest.approx(on_key0 / len(full_rows)) and math.isnan(old_rule[0, 1])
    assert on_key0 / T < 0.3 < on_key0 / len(full_rows)
    sink = sink_summary([stats])
    assert sink["sink_rate"] == 0.0 and sink["triples"] == 2
    assert sink["empty_row_share"] == pytest.approx(10 / 16)
    assert sink["sink_rate_nonempty_rows"] == 1.0      # head 0 only: head 1 has no non-empty row
    assert sink["triples_without_nonempty_row"] == 1
    assert math.isnan(sink_rate(torch.tensor([float("nan")])))


def test_sparsity_of_a_hand_made_map_per_head_and_view():
    T = 4
    view1 = torch.tril(torch.ones(2, T, T))
    view1[0, 3, :2] = 0.0                     # head 0: 2 zeros of 10 causal entries
    view1 = view1.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), 7.0)  # non-causal: ignored
    view2 = torch.tril(torch.ones(2, T, T))
    view2[1] = torch.eye(T)                   # head 1: 6 zeros
    combined = torch.tril(view1 - 0.5 * view2)
    combined[1, 1, 1] = 0.0                   # one exact cancellation in head 1
    maps = {"combined": combined[None], "view1": view1[None], "view2": view2[None]}
    summary = summarise([stats_of(maps, block=3)])
    assert summary["sparsity_per_view"]["view1"]["overall"] == pytest.approx(2 / 20)
    assert summary["sparsity_per_view"]["view2"]["overall"] == pytest.approx(6 / 20)
    # combined: head 0 has −0.5 where view 1 is zero (not a zero); head 1 has one exact cancellation
    assert summary["sparsity_per_head"][0] == pytest.approx([0.0, 1 / 10])
    assert summary["sparsity"] == pytest.approx(1 / 20)
    assert summary["sparsity_per_view"]["combined"]["overall"] == pytest.approx(1 / 20)


def test_blocks_accumulate_like_one_pass():
    torch.manual_seed(0)
    w = torch.tril(torch.relu(torch.randn(2, 3, 20, 20)))
    one, blocked = summarise([stats_of(single(w))]), summarise([stats_of(single(w), block=7)])
    for key in ("sparsity", "first_token_ratio", "entropy", "top_weight", "nonzeros_per_row", "empty_row_share"):
        assert blocked[key] == pytest.approx(one[key])


def test_two_view_correlation_and_consensus():
    torch.manual_seed(1)
    T = 10
    v1 = torch.tril(torch.rand(1, 2, T, T))
    v1[:, :, :, 0] = 0.0                                     # key 0 never survives in view 1
    v2 = 2 * v1                                              # head 0: perfectly correlated
    v2[:, 1] = torch.tril(torch.ones(T, T)) - v1[:, 1]     # head 1: perfectly anti-correlated, key 0 = 1
    stats = stats_of({"combined": v1 - 0.5 * v2, "view1": v1, "view2": v2})
    corr = stats.correlation()
    assert corr[0] == pytest.approx(1.0)
    assert corr[1] == pytest.approx(-1.0)
    i = torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(stats.row_curves()["consensus"], i)   # both non-zero on keys 1 … i


def test_uniform_reference_and_theory_bound():
    assert uniform_first_token_ratio(1) == 1.0
    assert uniform_first_token_ratio(3) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert survivor_bound([0, 99], beta=1.0) == [1.0, 1.0]
    assert survivor_bound([3], beta=0.0) == [4.0]
    positions = [15, 255]
    # β = 0: τ = 0, so half of the keys survive on average; β = 1: at most about one per row.
    half = random_survivors(32, positions, beta=0.0, trials=64)
    assert half == pytest.approx([(i + 1) / 2 for i in positions], rel=0.15)
    assert all(s <= 1.5 for s in random_survivors(32, positions, beta=1.0, trials=64))
    with pytest.raises(ValueError, match="head_dim"):
        random_survivors(0, positions)


def test_misfitting_maps_are_refused():
    stats = LayerStats(8, 2, 1)
    with pytest.raises(ValueError, match="do not fit"):
        stats.add(0, 4, single(torch.zeros(1, 3, 4, 4)))
    with pytest.raises(ValueError, match="stats"):
        summarise([])


def test_sink_rate_without_row_zero_and_score_correlation():
    T = 16
    w = torch.cat([first_token_map(1, 1, T), torch.zeros(1, 1, T, T)], dim=1)
    w[0, 1, 0, 0] = 1.0                      # head 1: only row 0 is non-empty
    stats = stats_of(single(w))
    alpha = stats.alpha0()
    assert alpha[0, 0] == pytest.approx((1 + 0.9 * (T - 1)) / T) and alpha[0, 1] == pytest.approx(1 / T)
    torch.testing.assert_close(stats.alpha0(skip_first_row=True)[0],
                               torch.tensor([0.9, 0.0], dtype=torch.float64))   # rows 1 … T−1 over T − 1
    old_rule = stats.alpha0(nonempty_rows=True)
    assert old_rule[0, 0] == pytest.approx((1 + 0.9 * (T - 1)) / T) and old_rule[0, 1] == 1.0
    without = stats.alpha0(nonempty_rows=True, skip_first_row=True)
    assert without[0, 0] == pytest.approx(0.9) and math.isnan(without[0, 1])
    sink = sink_summary([stats])
    assert sink["sink_rate"] == 0.5                    # head 1: α_0 = 1/16 under Gu's denominator
    assert sink["sink_rate_nonempty_rows"] == 1.0 and sink["sink_rate_nonempty_rows_without_row0"] == 1.0
    torch.manual_seed(2)
    scores = torch.randn(1, 2, T, T)
    two = LayerStats(T, 2, 2)
    assert torch.isnan(two.score_correlation()).all()
    two.add_scores(0, T, [scores, torch.stack([3 * scores[:, 0] + 1, -scores[:, 1]], dim=1)])
    torch.testing.assert_close(two.score_correlation(), torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_tile_occupancy_counts_causal_tiles_with_any_weight():
    """64 x 64 tiles: 130 tokens make 3 x 3 tiles of which 6 are causal; weights at (65, 5) and (100, 70)
    (tiles (1, 0) and (1, 1), rows of tile 1 split across row blocks), and one in view 2 only at (129, 129)
    (tile (2, 2)): 3 of 6 occupied in the first sequence, none in the second."""
    T = 130
    v1, v2 = torch.zeros(2, 1, T, T), torch.zeros(2, 1, T, T)
    v1[0, 0, 65, 5] = 0.3
    v1[0, 0, 100, 70] = 0.2
    v2[0, 0, 129, 129] = 0.1
    maps = {"combined": v1 - 0.5 * v2, "view1": v1, "view2": v2}
    for block in (None, 70, 33):
        out = summarise([stats_of(maps, block)])
        assert out["tile"] == 64
        assert out["tile_occupancy"] == pytest.approx(3 / 12)
        assert out["tile_occupancy_per_layer"] == [pytest.approx(3 / 12)]
    dense = summarise([stats_of(single(uniform_map(1, 2, T)))])
    assert dense["tile_occupancy"] == 1.0


def test_gu_sink_rate_counts_empty_rows_in_the_denominator():
    """SPEC §4a: α_0 = (1/T) Σ_i w̃_i0 over all T rows, an empty row adding 0. Hand-built heads on T = 64
    tokens (expected values from that formula, not from the code):
    A: only row 0 is non-empty (w̃_00 = 1): α_0 = 1/64, no sink; over non-empty rows it would be 1, a sink.
    B: row 0, then rows 1 … 39 put 0.5 on key 0 and 0.5 on key i; rows 40 … 63 empty:
       α_0 = (1 + 39 · 0.5)/64 = 20.5/64 ≈ 0.32 > 0.3, a sink (non-empty rows: 20.5/40).
    C: as B with rows 30 … 63 empty: α_0 = (1 + 29 · 0.5)/64 = 15.5/64 ≈ 0.24, no sink (non-empty: 15.5/30).
    D: causal uniform, no empty row: α_0 = H_64/64 under both rules."""
    T = 64
    w = torch.zeros(1, 4, T, T)
    w[0, 0, 0, 0] = 1.0
    for head, last in ((1, 40), (2, 30)):
        w[0, head, 0, 0] = 1.0
        for i in range(1, last):
            w[0, head, i, 0] = w[0, head, i, i] = 0.5
    w[0, 3] = uniform_map(1, 1, T)[0, 0]
    expected_gu = [1 / T, 20.5 / T, 15.5 / T, harmonic(T) / T]
    expected_nonempty = [1.0, 20.5 / 40, 15.5 / 30, harmonic(T) / T]
    for block in (None, 7):
        stats = stats_of(single(w), block)
        torch.testing.assert_close(stats.alpha0()[0], torch.tensor(expected_gu, dtype=torch.float64))
        torch.testing.assert_close(stats.alpha0(nonempty_rows=True)[0],
                                   torch.tensor(expected_nonempty, dtype=torch.float64))
        sink = sink_summary([stats])
        assert sink["sink_rate"] == pytest.approx(1 / 4)             # B only
        assert sink["sink_rate_per_layer"] == [pytest.approx(1 / 4)]
        assert sink["alpha0_per_layer"] == [pytest.approx(sum(expected_gu) / 4)]
        assert sink["sink_rate_nonempty_rows"] == pytest.approx(3 / 4)   # A, B and C
        assert sink["empty_row_share"] == pytest.approx((63 + 24 + 34 + 0) / (4 * T))
        assert sink["empty_row_share_per_layer"] == [pytest.approx((63 + 24 + 34) / (4 * T))]
        assert sink["triples"] == 4 and sink["triples_without_nonempty_row"] == 0
    # the rate is per (sequence, layer, head): a second layer of four uniform heads halves it
    two_layers = sink_summary([stats_of(single(w)), stats_of(single(uniform_map(1, 4, T)))])
    assert two_layers["sink_rate"] == pytest.approx(1 / 8) and two_layers["triples"] == 8
    assert two_layers["sink_rate_per_layer"] == [pytest.approx(1 / 4), 0.0]
