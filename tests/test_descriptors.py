"""kernels.common.row_block_descriptor without a GPU, for both callers (gluon_tiles.row_descriptor, Gluon's
TensorDescriptor; launch.row_blocks, Triton's): a descriptor made from the fields kept for a tensor's layout is the
descriptor a fresh check would make (field by field), a layout it was not checked for gets its own checked descriptor,
a tensor the checks refuse is refused at every call, and the store keeps no tensor alive."""

import gc
import weakref

import pytest
import torch

from kernels import common
from kernels.threshold import launch


def _rows(B: int, T: int, H: int, width: int, dtype=torch.bfloat16) -> torch.Tensor:
    """(B, H, T, width) over (B, T, H, width) memory, the projections' layout."""
    return torch.randn(B, T, H, width).to(dtype).transpose(1, 2)


def _gluon():
    pytest.importorskip("triton.experimental.gluon")
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels import gluon_tiles

    def make(t, rows):
        return gluon_tiles.row_descriptor(t, rows)

    def fresh(t, rows):
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, t.shape[-1]],
                                gluon_tiles._row_block_layout(rows, t.shape[-1]))
    return make, fresh


def _triton():
    from triton.tools.tensor_descriptor import TensorDescriptor

    def make(t, rows):
        return launch.row_blocks(t, rows, t.shape[-1])

    def fresh(t, rows):
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, t.shape[-1]])
    return make, fresh


KINDS = [pytest.param(_gluon, id="gluon"), pytest.param(_triton, id="triton")]


def _fields(d) -> dict:
    return {name: value for name, value in vars(d).items() if name != "base"}


@pytest.fixture(autouse=True)
def empty_store(monkeypatch):
    monkeypatch.setattr(common, "_checked_descriptors", {})


@pytest.mark.parametrize("kind", KINDS)
def test_a_kept_layout_gives_the_descriptor_a_fresh_check_would(kind):
    make, fresh = kind()
    first, second = _rows(2, 96, 3, 64), _rows(2, 96, 3, 64)
    made = make(first, 32)
    assert len(common._checked_descriptors) == 1
    again = make(second, 32)  # from the kept fields
    assert len(common._checked_descriptors) == 1
    assert type(again) is type(fresh(second, 32))
    assert again.base is second and made.base is first
    assert _fields(again) == _fields(fresh(second, 32)) == _fields(made)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("other", [
    lambda: _rows(2, 97, 3, 64),                          # another length
    lambda: _rows(2, 96, 3, 128),                         # another width
    lambda: _rows(2, 96, 3, 64, torch.float16),           # another dtype
    lambda: torch.randn(2, 3, 96, 64).to(torch.bfloat16),  # contiguous (B, H, T, d): other strides
])
def test_another_layout_is_checked_and_kept_apart(kind, other):
    make, fresh = kind()
    make(_rows(2, 96, 3, 64), 32)
    t = other()
    made = make(t, 32)
    assert len(common._checked_descriptors) == 2
    assert made.base is t and _fields(made) == _fields(fresh(t, 32))


@pytest.mark.parametrize("kind", KINDS)
def test_other_rows_per_block_are_kept_apart(kind):
    make, _ = kind()
    t = _rows(1, 64, 2, 64)
    a, b = make(t, 32), make(t, 64)
    assert list(a.block_shape) == [1, 1, 32, 64] and list(b.block_shape) == [1, 1, 64, 64]
    assert list(make(t, 32).block_shape) == [1, 1, 32, 64]


def test_the_two_kinds_are_kept_apart():
    """The same tensor and block through both callers: two entries, each of its own class."""
    (make_g, fresh_g), (make_t, fresh_t) = _gluon(), _triton()
    t = _rows(1, 64, 2, 64)
    make_t(t, 32)
    g = make_g(t, 32)
    assert len(common._checked_descriptors) == 2
    assert type(g) is type(fresh_g(t, 32)) and type(make_t(t, 32)) is type(fresh_t(t, 32))


@pytest.mark.parametrize("kind", KINDS)
def test_a_misaligned_tensor_is_refused_every_time(kind):
    """Same dtype, shape and strides as a kept layout, but a base 2 bytes past a 16-byte boundary: the check that the
    kept fields skip must still run for it."""
    make, _ = kind()
    store = torch.randn(2 * 3 * 96 * 64 + 8).to(torch.bfloat16)
    aligned = store[:-8].view(2, 96, 3, 64).transpose(1, 2)
    misaligned = store[1:-7].view(2, 96, 3, 64).transpose(1, 2)
    assert aligned.data_ptr() % 16 == 0 and misaligned.data_ptr() % 16 != 0
    make(aligned, 32)
    for _ in range(2):
        with pytest.raises(AssertionError, match="16-byte aligned"):
            make(misaligned, 32)
    assert len(common._checked_descriptors) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_store_keeps_no_tensor_alive(kind):
    make, _ = kind()
    t = _rows(1, 64, 2, 64)
    alive = weakref.ref(t)
    make(t, 32)
    make(t, 32)
    del t
    gc.collect()
    assert alive() is None


def test_the_store_starts_over_when_full(monkeypatch):
    monkeypatch.setattr(common, "MAX_KEPT_DESCRIPTORS", 2)
    make, _ = _triton()
    for T in (64, 65, 66):
        make(_rows(1, T, 2, 64), 32)
    assert len(common._checked_descriptors) == 1


@pytest.mark.parametrize("d", [64, 128])
def test_the_dq_buffers_descriptors_cover_each_head_in_row_blocks(d):
    """The fp32 dQ buffers the Gluon backwards add into by the copy engine: each view's (B, H, Tq, d) buffer whole
    (so that a block's rows past Tq fall outside its head and are dropped, not added into the next head), in blocks of
    the kernel's query rows and of the columns one dq'^T product gives (64: two blocks a row at q/k 128), over the
    view's own memory; the one-view score ops' buffer in blocks of its tile's rows and all d columns."""
    pytest.importorskip("triton.experimental.gluon")
    from kernels.score_ops import gluon_backward as score_backward
    from kernels.threshold import gluon_backward as paired_backward

    B, H, Tq = 2, 3, 1000
    bufs = torch.zeros((2, B, H, Tq, d), dtype=torch.float32)
    for view, desc in zip(bufs, paired_backward.dq_descriptors(bufs[0], bufs[1])):
        assert desc.base.data_ptr() == view.data_ptr()
        assert list(desc.shape) == [B, H, Tq, d] and list(desc.strides) == list(view.stride())
        assert list(desc.block_shape) == [1, 1, paired_backward.BLOCK_M.value, paired_backward.DQ_ROWS.value]
        assert desc.layout.element_bitwidth == 32
    one = torch.zeros((B, H, Tq, 64), dtype=torch.float32)
    desc = score_backward.dq_descriptor(one, 32)
    assert list(desc.shape) == [B, H, Tq, 64] and list(desc.block_shape) == [1, 1, 32, 64]
