"""kernels.common, what the ops' launchers share: head-dimension padding, ceiling division, outputs in their inputs'
layout, binding the CUDA context before descriptor launches, the tile that fits."""
import threading

import pytest
import torch
import triton

from kernels import common
from kernels.common import cdiv, padded


def test_padded_head_dimension_is_the_next_power_of_two_from_16():
    assert [padded(d) for d in (1, 16, 17, 48, 64, 65, 100, 128, 200, 256)] == [16, 16, 32, 64, 64, 128, 128, 128,
                                                                                256, 256]
    assert all(padded(d) == max(16, triton.next_power_of_2(d)) for d in range(1, 513))


def test_host_cdiv_is_tritons():
    assert [cdiv(a, 64) for a in (0, 1, 63, 64, 65, 8192, 8193)] == [0, 1, 1, 1, 2, 128, 129]
    assert all(cdiv(a, b) == triton.cdiv(a, b) for a in range(0, 300) for b in (1, 2, 3, 16, 32, 64, 100, 128))


def test_cuda_context_is_bound_once_per_thread_and_device(monkeypatch):
    """Descriptor launches bind the CUDA context with a stream query: once per thread and device, not on
    every launch (a new thread, like autograd's, queries again)."""
    queried = []

    class Stream:
        def __init__(self, device):
            self.device = device

        def query(self):
            queried.append((threading.get_ident(), self.device.index))
            return True

    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(common, "_bound_contexts", threading.local())
    for _ in range(3):
        common.bind_cuda_context(torch.device("cuda", 0))
    common.bind_cuda_context(torch.device("cuda", 1))
    thread = threading.Thread(target=common.bind_cuda_context, args=(torch.device("cuda", 0),))
    thread.start()
    thread.join()
    assert [d for _, d in queried] == [0, 1, 0]
    assert queried[0][0] == queried[1][0] != queried[2][0]


@pytest.mark.parametrize("dims", [(0, 1, 2), (0, 2, 1), (2, 1, 0), (1, 0, 2)])
def test_outputs_take_their_inputs_layout(dims):
    """new_rows_like allocates (B, H, T, width) with B, H, T in the input's memory order and the last
    dimension contiguous: the strides of a dense tensor laid out in that order, then viewed as (B, H, T, ·)."""
    shape = (2, 3, 5)
    x = torch.zeros(tuple(shape[i] for i in dims) + (8,)).permute(*[dims.index(i) for i in range(3)], 3)
    assert x.shape[:3] == shape
    y = common.new_rows_like(x, 16, torch.float16)
    dense = torch.zeros(tuple(shape[i] for i in dims) + (16,)).permute(*[dims.index(i) for i in range(3)], 3)
    assert y.shape == (*shape, 16) and y.dtype == torch.float16 and y.stride() == dense.stride()


def test_tile_candidates_prefer_the_given_then_the_interpreters_then_the_remembered_tile(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    chosen = {("fwd",): "b"}
    target = common.CompileTarget(arch=90)
    assert common.tile_candidates(["a", "b"], "z", None, chosen, ("fwd",), "i") == ["z"]
    assert common.tile_candidates(["a", "b"], None, None, chosen, ("fwd",), "i") == ["b"]
    assert common.tile_candidates(["a", "b"], None, None, chosen, ("dq",), "i") == ["a", "b"]
    assert common.tile_candidates(["a", "b"], None, target, chosen, ("fwd",), "i") == ["a", "b"]  # compiling
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert common.tile_candidates(["a", "b"], None, None, chosen, ("fwd",), "i") == ["i"]


def test_first_fitting_skips_tiles_that_do_not_fit_remembers_the_one_that_ran_and_raises_the_last_error(
        monkeypatch):
    from triton.runtime.errors import OutOfResources

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    tried = []

    def launch(tile):
        tried.append(tile)
        if tile in ("big", "bigger"):
            raise OutOfResources(300000, 232448, "shared memory")
        return f"ran {tile}"

    def fit(candidates, chosen, key, tile=None, target=None):
        return common.first_fitting(candidates, launch, tile=tile, target=target, chosen=chosen, key=key,
                                    interpreter_tile="i")

    chosen = {}
    assert fit(["bigger", "big", "small", "tiny"], chosen, ("k",)) == ("small", "ran small")
    assert tried == ["bigger", "big", "small"] and chosen == {("k",): "small"}
    tried.clear()
    assert fit(["bigger", "big", "small"], chosen, ("k",)) == ("small", "ran small")  # the remembered tile at once
    assert tried == ["small"]
    with pytest.raises(OutOfResources):
        fit(["bigger", "big"], chosen, ("q",))
    assert ("q",) not in chosen
    # a tile the caller gave, or a compile for a target, is not remembered
    assert fit(["bigger", "small"], chosen, ("given",), tile="tiny") == ("tiny", "ran tiny")
    assert fit(["bigger", "small"], chosen, ("compiled",), target=common.CompileTarget(arch=90)) == (
        "small", "ran small")
    assert ("given",) not in chosen and ("compiled",) not in chosen
    with pytest.raises(ValueError, match="no tile candidates"):
        fit([], chosen, ("none",))


def test_tma_ready_needs_a_contiguous_last_dimension_and_16_byte_aligned_base_and_strides():
    rows = torch.zeros(2, 3, 40, 64, dtype=torch.bfloat16)
    assert common.tma_ready(rows, rows.transpose(1, 2).contiguous().transpose(1, 2))
    assert common.tma_ready(torch.zeros(2, 3, 40, 4))  # fp32 rows of 16 bytes
    assert common.tma_ready(rows[:, :, 1:, :8])  # base 128 bytes on, rows of 128 bytes
    assert not common.tma_ready(rows.transpose(2, 3))  # last dimension not contiguous
    assert not common.tma_ready(rows[..., 1:9])  # base 2 bytes on
    assert not common.tma_ready(torch.zeros(2 * 3 * 40 * 64 + 1, dtype=torch.bfloat16)[1:].view(2, 3, 40, 64))
    assert not common.tma_ready(torch.zeros(2, 3, 40, 12, dtype=torch.bfloat16))  # rows of 24 bytes
    assert not common.tma_ready(rows, torch.zeros(2, 3, 40, 12, dtype=torch.bfloat16))  # every tensor is checked
