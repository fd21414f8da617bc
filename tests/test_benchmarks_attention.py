"""benchmarks.attention without a GPU: the FLOP count it divides by, the survivor share it reports, its table, and
its refusal to run on a machine without a GPU."""
import pytest
import torch

from benchmarks.attention import _flops_threshold, format_table, main, survivor_share


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


def test_table_rows_carry_tflops_ratio_and_survivors():
    row = dict(T=4096, B=4, method="tda (paired)", H=6, d=64, dv=128, fwd=0.5, fwd_bwd=2.0, flops=(1e11, 2.5e11),
               ratio=1.25, mem=146.0, host_us=1200.0, share=0.002)
    text = format_table([row])
    header, rule, line = text.splitlines()
    assert header.count("|") == rule.count("|") == line.count("|") == 13
    assert "| 4096 | 4 | tda (paired) | 6×64 (128) | 0.500 | 200 | 2.000 | 175 | 1.25 | 146 | 1200 | 0.2% |" == line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["--seq", "128", "--head-dims", "64"])
