"""benchmarks.attention without a GPU: the FLOP count it divides by, the survivor share and tile occupancy it reports,
its dense inputs (under Triton's interpreter), its arguments, its tables, the capture of a trained run's q, k, v
(benchmarks.captured, from a tiny run on CPU), and its refusal to run on a machine without a GPU."""
import pytest
import torch

from benchmarks import captured
from benchmarks.attention import (DENSE_RHO, _flops_threshold, _tda_inputs, format_table, main, occupancy_of,
                                  parse_args, survivor_share, tile_occupancy)


def test_paired_tda_counts_softmax_forward_flops_and_backward_two_and_a_half_times():
    """The paired layout (H/2 heads, q/k d, v 2d) does exactly the products of softmax with H heads of d."""
    B, H, T, d = 2, 12, 1024, 64
    fwd, bwd = _flops_threshold(B, H // 2, T, d, 2 * d, 2)
    assert fwd == 4 * B * H * T * T * d / 2
    assert bwd == 2.5 * fwd
    one_fwd, one_bwd = _flops_threshold(B, H, T, d, d, 1)  # TRA: the same head layout as softmax
    assert one_fwd == fwd and one_bwd == 2 * B * H * (T * T / 2) * 5 * d


def _inputs(T, d, sign):
    direction = torch.zeros(d)
    direction[0] = 1.0
    rows = direction.expand(T, d)
    return {"q1": rows.reshape(1, 1, T, d), "k1": (sign * rows).reshape(1, 1, T, d)}


@pytest.mark.parametrize("sign,share", [(1.0, 1.0), (-1.0, 0.0)])
def test_survivor_share_is_the_share_of_visible_weights_above_the_threshold(sign, share):
    """Keys equal to the queries (cosine 1, above every threshold at d = 64) all survive; opposite ones none."""
    assert survivor_share(_inputs(100, 64, sign), rows=30) == share


def test_survivor_share_counts_only_visible_keys():
    """Half the keys point along the queries, half away: a row sees its visible ones only (causal)."""
    x = _inputs(8, 64, 1.0)
    x["k1"] = x["k1"].clone()
    x["k1"][..., 1::2, 0] = -1.0   # odd keys point away
    # rows 6, 7 see keys 0..6 and 0..7: 4 of 7 and 4 of 8 survive
    assert survivor_share(x, rows=2) == pytest.approx(8 / 15)


def test_table_rows_carry_tflops_ratio_survivors_and_tiles():
    row = dict(T=4096, B=4, method="tda (paired)", H=6, d=64, dv=128, fwd=0.5, fwd_bwd=2.0, flops=(1e11, 2.5e11),
               ratio=1.25, mem=146.0, host_us=1200.0, share=0.002, occupancy=0.0912)
    softmax = dict(row, method="sdpa-cudnn")
    del softmax["share"], softmax["occupancy"]
    header, rule, line, sm = format_table([row, softmax]).splitlines()
    assert header.count("|") == rule.count("|") == line.count("|") == 14
    assert line == ("| 4096 | 4 | tda (paired) | 6×64 (128) | 0.500 | 200 | 2.000 | 175 | 1.25 | 146 | 1200 | 0.2% "
                    "| 9.1% |")
    assert sm.endswith("| 1200 |  | 100% |")  # every softmax tile is occupied


def test_tile_occupancy_counts_the_causal_cells_only():
    """Cells holding no visible pair (above the diagonal, with queries aligned to the end of the keys) count for
    nothing; Tq = 100 against Tk = 200: cell rows 0 (positions 100-163) and 1 (164-199) see key cells 0-2 and 0-3."""
    rec = torch.zeros(1, 2, 2, 4, dtype=torch.uint8)
    rec[0, 0, 0, 0] = rec[0, 1, 1, 3] = 1
    rec[0, 0, 0, 3] = 1  # above the diagonal: never marked by a forward, and not counted
    assert tile_occupancy(rec, 100, 200) == pytest.approx(2 / (2 * 7))
    assert tile_occupancy(rec, 100, 200, causal=False) == pytest.approx(3 / 16)


def test_dense_inputs_fill_every_tile():
    """--dense draws q and k sharing a direction strongly enough that every 64 x 64 tile holds a survivor in both
    views (the forward's own record, interpreted), where rows without a shared direction leave tiles empty."""
    torch.manual_seed(0)
    dense = _tda_inputs(1, 256, 2, 64, 128, torch.float32, 2, DENSE_RHO, device="cpu")
    assert occupancy_of(dense) == 1.0
    for view in ("1", "2"):
        assert occupancy_of({"q1": dense["q" + view], "k1": dense["k" + view], "v": dense["v"]}) == 1.0
    sparse = _tda_inputs(1, 256, 2, 64, 128, torch.float32, 1, 0.0, device="cpu")
    assert occupancy_of(sparse, beta=1.5) < 1.0


def test_arguments():
    assert parse_args(["--dense"]).rho == DENSE_RHO and parse_args([]).rho == 0.5
    run = parse_args(["--from-run", "runs/x", "--train-first", "+experiment=paper_small trainer.max_steps=3000"])
    assert run.seq == [2048, 4096, 8192, 16384] and run.tokens == 65536 and run.train_first.endswith("3000")
    assert parse_args([]).seq[0] == 1024 and parse_args([]).tokens == 16384
    assert parse_args(["--from-run", "r", "--seq", "512", "--tokens", "4096"]).seq == [512]
    for bad in (["--train-first", "x=1"], ["--dense", "--from-run", "r"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_capture_of_a_trained_run(train_run):
    """Each layer's q, k of both views (after RoPE) and v from a tiny TDA run's held-out text, windows stacked to at
    least the tokens asked for (repeated where the held-out split is short), with the layer's lambda, beta and p: the
    module's own attention output comes from them, and their tile occupancy (from the interpreted forward's record) is
    the float64 one."""
    from threshold_float64 import Case, cell_support

    from model.attention import Projections
    from benchmarks.timing import tile_occupancy

    run = train_run("name=bench_capture", "attention=tda", "model.n_embd=64", "trainer.max_steps=2")
    model, cfg = captured.load(run, 1024, torch.device("cpu"))
    assert model.max_seq_len == 1024  # raised from the run's 512: RoPE extrapolates
    idx = captured.held_out_tokens(cfg, 128, 1000)
    assert idx.shape == (8, 128)
    many = captured.held_out_tokens(cfg, 512, 200_000)  # more windows than the held-out split has: they repeat
    assert many.shape == (391, 512) and any(torch.equal(many[0], many[i]) for i in range(1, 391))
    layers = captured.capture(model, idx[:2], torch.float32)
    assert [c.layer for c in layers] == [0, 1] and len(layers[0].q) == len(layers[0].k) == 2
    c = layers[1]
    assert c.q[0].shape == c.k[1].shape == (2, 2, 128, 16) and c.v.shape == (2, 2, 128, 32)
    assert c.lam.shape == (1,) and c.beta == 1.0 and c.p == 2.0
    block = model.blocks[1]  # the captured inputs are block 1's: its attention from its own input gives the same
    own = block.attn.project(block.attn_norm(_residual_before(model, idx[:2], 1)), torch.arange(128))
    torch.testing.assert_close(block.attn.mix(Projections(c.q, c.k, c.v)), block.attn.mix(own))
    inputs = dict(q1=c.q[0], k1=c.k[0], q2=c.q[1], k2=c.k[1], beta=torch.full((2,), c.beta))
    support = cell_support(inputs, Case(T=128, d=16, dv=32, H=2, Hkv=2, B=2))
    assert captured.occupancy(c) == pytest.approx(support.double().mean().item() * 4 / 3)  # 3 of 4 cells causal
    assert tile_occupancy(support.to(torch.uint8), 128, 128) == captured.occupancy(c)
    with pytest.raises(ValueError, match="softmax"):
        captured.load(train_run("name=bench_capture_softmax", "attention=softmax", "trainer.max_steps=2"), 1024,
                      torch.device("cpu"))


def _residual_before(model, idx, layer: int) -> torch.Tensor:
    """The residual stream entering block ``layer`` for tokens idx."""
    positions = torch.arange(idx.shape[1])
    x = model.embed(idx)
    for block in model.blocks[:layer]:
        x = block(x, positions)
    return x


def test_capture_table_sums_the_layers():
    rows = [dict(T=2048, B=32, layer=i, occupancy=o, fwd=1.0, fwd_off=2.0, fwd_bwd=3.0, fwd_bwd_off=6.0,
                 host_us=100.0 + i, fwd_graph=0.75, fwd_bwd_graph=2.0,
                 cudnn=dict(fwd=0.5, fwd_bwd=2.0, mem=1.0, fwd_graph=0.25, fwd_bwd_graph=1.6), flash=None)
            for i, o in enumerate((0.1, 0.3))]
    total = captured._summed(rows)
    assert total["fwd_bwd"] == 6.0 and total["occupancy"] == pytest.approx(0.2) and total["cudnn"]["fwd_bwd"] == 4.0
    assert total["host_us"] == 201.0 and total["fwd_bwd_graph"] == 4.0 and "mem" not in total["cudnn"]
    lines = captured.format_rows(rows + [total]).splitlines()
    assert len(lines[0].split("|")) == len(lines[-1].split("|"))
    assert lines[-1] == ("| 2048 | 32 | Σ | 20.0% | 2.000 | 4.000 | 6.000 | 12.000 | 1.000 / 4.000 | – | 1.50 "
                         "| 3.00 | 201 | 1.500 / 4.000 | 0.500 / 3.200 | 1.25 |")


def test_capture_table_leaves_untimed_columns_blank():
    row = dict(T=2048, B=32, layer=0, occupancy=0.5, fwd=1.0, fwd_off=2.0, fwd_bwd=3.0, fwd_bwd_off=6.0,
               host_us=float("nan"), cudnn=None, flash=None)
    assert captured.format_rows([row]).splitlines()[-1] == (
        "| 2048 | 32 | 0 | 50.0% | 1.000 | 2.000 | 3.000 | 6.000 | – | – | – | – | – | – | – | – |")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["--seq", "128", "--head-dims", "64"])


def test_the_triton_forward_gets_its_own_row_only_where_the_switch_decides(monkeypatch):
    """At q/k 128 on Hopper (here: a stand-in for the fits check) paired TDA is timed a second time with the Triton
    forward, the switch off while it is timed and restored after; where the Gluon forward fits anyway (d = 64) or not
    even with the switch on, no second row."""
    import benchmarks.attention as bench
    from kernels.threshold import launch

    seen = []
    monkeypatch.setattr(bench, "_threshold_rows", lambda name, x, views, d, dv, rep_ms, skip_ab, *a, **k:
                        seen.append(launch.GLUON_FORWARD_D128) or [dict(method=name, d=d)])
    x = _tda_inputs(1, 64, 2, 128, 256, torch.bfloat16, 2, 0.5, device="cpu")
    monkeypatch.setattr(launch, "gluon_forward_fits", lambda *args: launch.GLUON_FORWARD_D128)   # fits by the switch
    assert bench.triton_forward_rows(x, 128, 1) == [dict(method="tda (paired), Triton fwd", d=128)]
    assert seen == [False] and launch.GLUON_FORWARD_D128 is True
    monkeypatch.setattr(launch, "gluon_forward_fits", lambda *args: True)                        # fits anyway
    assert bench.triton_forward_rows(x, 128, 1) == []
    monkeypatch.setattr(launch, "gluon_forward_fits", lambda *args: False)                       # never fits
    assert bench.triton_forward_rows(x, 128, 1) == [] and seen == [False]


def test_the_triton_backward_gets_its_own_row_only_where_the_switch_decides(monkeypatch):
    """The same for the backward at q/k 128: timed a second time with launch.GLUON_BACKWARD_D128 off (restored after),
    where that switch alone decides whether the Gluon backward fits; no second row where it does not decide."""
    import benchmarks.attention as bench
    from kernels.threshold import launch

    seen = []
    monkeypatch.setattr(bench, "_threshold_rows", lambda name, x, views, d, dv, rep_ms, skip_ab, *a, **k:
                        seen.append(launch.GLUON_BACKWARD_D128) or [dict(method=name, d=d)])
    x = _tda_inputs(1, 64, 2, 128, 256, torch.bfloat16, 2, 0.5, device="cpu")
    fits_seen = []
    monkeypatch.setattr(launch, "gluon_backward_fits", lambda do, q1, *a: fits_seen.append(do.shape) or
                        launch.GLUON_BACKWARD_D128)
    assert bench.triton_backward_rows(x, 128, 1) == [dict(method="tda (paired), Triton bwd", d=128)]
    assert seen == [False] and launch.GLUON_BACKWARD_D128 is True
    assert fits_seen[0] == x["v"].shape  # the gradient's stand-in has dO's shape
    monkeypatch.setattr(launch, "gluon_backward_fits", lambda *args: True)
    assert bench.triton_backward_rows(x, 128, 1) == []
    monkeypatch.setattr(launch, "gluon_backward_fits", lambda *args: False)
    assert bench.triton_backward_rows(x, 128, 1) == [] and seen == [False]


def test_forward_variants_time_the_bound_on_the_gluon_forward_only(monkeypatch):
    """--skip-ab's forward table: the Gluon row times the forward without the record, with it, with the products of
    empty tiles skipped, and with the bound (gluon_forward.BOUND, restored after); the Triton row has no bound column
    ("—"); the first three Gluon columns are without the bound whatever the default."""
    import benchmarks.attention as bench
    from kernels.threshold import gluon_forward, launch

    x = {n: torch.randn(1, 2, 128, 64, dtype=torch.bfloat16) for n in ("q1", "k1", "q2", "k2")}
    x["v"] = torch.randn(1, 2, 128, 128, dtype=torch.bfloat16)
    x["lam"] = torch.full((2,), 0.5)
    seen = []
    monkeypatch.setattr(launch, "gluon_forward_fits", lambda *a: True)
    monkeypatch.setattr(launch, "forward", lambda *a, record, skip_products, tile, **k:
                        seen.append((tile is None, record, skip_products, gluon_forward.BOUND)))
    monkeypatch.setattr(bench, "time_ms", lambda fn, grads, rep_ms: fn() or 1.0)
    monkeypatch.setattr(gluon_forward, "BOUND", "the default")
    lines = bench.forward_variants(x, 2, 10)
    assert gluon_forward.BOUND == "the default"
    assert seen[:4] == [(True, False, False, False), (True, True, False, False), (True, True, True, False),
                        (True, True, True, True)]
    assert [s[3] for s in seen[4:]] == [False] * 3 and not any(s[0] for s in seen[4:])
    gluon, triton_row = lines
    assert "Gluon" in gluon and gluon.count("1.000") == 4
    assert triton_row.count("1.000") == 3 and triton_row.count("—") == 1
    assert len(gluon.split("|")) == len(bench.FORWARD_HEAD.splitlines()[0].split("|"))


def test_graphed_columns_appear_with_graphs_and_are_blank_for_rows_not_replayed():
    row = dict(T=4096, B=4, method="tda (paired)", H=6, d=64, dv=128, fwd=0.5, fwd_bwd=2.0, flops=(1e11, 2.5e11),
               ratio=1.25, mem=146.0, host_us=1200.0, share=0.002, occupancy=0.0912, fwd_bwd_graph=1.5,
               ratio_graph=1.1)
    plain = dict(row, method="tda (paired), no skip")
    del plain["fwd_bwd_graph"], plain["ratio_graph"]
    header, rule, line, other = format_table([row, plain]).splitlines()
    assert header.endswith("| tiles | graphed fwd+bwd ms | graphed ratio |")
    assert header.count("|") == rule.count("|") == line.count("|") == other.count("|") == 16
    assert line.endswith("| 9.1% | 1.500 | 1.10 |") and other.endswith("| 9.1% | – | – |")
    assert "graphed" not in format_table([plain])   # without --graphs the table is as before
    assert parse_args(["--graphs"]).graphs and not parse_args([]).graphs


def test_replays_timed_in_groups_give_the_median_groups_time():
    """benchmarks.timing.time_replays on the CPU (the calls run eagerly): one warm-up call, then ``reps`` calls in
    ``groups`` timed groups; one slow group does not move the median, where one mean over all calls would."""
    import time
    from benchmarks.timing import time_replays

    sleeps = iter([0.0, 0.002, 0.060, 0.002])   # the warm-up call, then one call per group

    def call():
        time.sleep(next(sleeps))

    ms = time_replays(call, torch.device("cpu"), reps=3, groups=3)
    assert 2.0 <= ms < 20.0   # the median group (2 ms), not the mean (21 ms)
    calls = []
    assert time_replays(lambda: calls.append(1), torch.device("cpu"), reps=7, inner=2, groups=3) >= 0.0
    assert len(calls) == 1 + 7
