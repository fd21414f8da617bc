"""benchmarks.fused_backward_ab without a GPU: its variant syntax and its refusal to run on a machine without one."""
import argparse

import pytest
import torch


@pytest.fixture(scope="module")
def ab():
    from benchmarks import fused_backward_ab

    return fused_backward_ab


def test_variants_parse_into_attribute_settings(ab):
    args = ab.parse_args(["--variant", "outer:OUTER_SCORE_FACTOR=True", "--variant", "deep:STAGES=3,FLAG=False",
                          "--seq", "4096"])
    assert args.variant == [("outer", {"OUTER_SCORE_FACTOR": True}), ("deep", {"STAGES": 3, "FLAG": False})]
    assert args.seq == [4096] and args.rounds == 2


@pytest.mark.parametrize("text", ["outer", "outer:", ":A=1", "outer:A", "outer:A=not a literal", "outer:1A=2",
                                  "split:A=1", "fused:A=1"])
def test_malformed_variants_are_refused(ab, text):
    with pytest.raises(argparse.ArgumentTypeError):
        ab.parse_variant(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_it_says_so(ab):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        ab.main(["--variant", "x:STAGES=3"])


def test_the_head_width_is_64_or_128(ab):
    """q/k 64 by default; 128 measures the paired layout of heads of 128 (two launches); no other width has a fused
    kernel."""
    assert ab.parse_args([]).head_dim == 64
    assert ab.parse_args(["--head-dim", "128"]).head_dim == 128
    with pytest.raises(SystemExit):
        ab.parse_args(["--head-dim", "96"])


def test_the_timing_inputs_take_several_shared_direction_weights(ab):
    assert ab.parse_args([]).rho == [0.5]
    assert ab.parse_args(["--rho", "0.5", "1.0"]).rho == [0.5, 1.0]
    with pytest.raises(SystemExit):
        ab.parse_args(["--rho", "dense"])
