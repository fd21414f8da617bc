"""kernels.gluon_tiles.row_descriptor without a GPU: a descriptor made from the fields kept for a tensor's layout is the
descriptor TensorDescriptor would make (checked field by field against a fresh one), a layout it was not checked for
gets its own checked descriptor, a tensor the checks refuse is refused at every call, and the store keeps no tensor
alive."""

import gc
import weakref

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

from kernels import gluon_tiles  # noqa: E402


def _rows(B: int, T: int, H: int, width: int, dtype=torch.bfloat16) -> torch.Tensor:
    """(B, H, T, width) over (B, T, H, width) memory, the projections' layout."""
    return torch.randn(B, T, H, width).to(dtype).transpose(1, 2)


def _fresh(t: torch.Tensor, rows: int) -> TensorDescriptor:
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, t.shape[-1]],
                            gluon_tiles._row_block_layout(rows, t.shape[-1]))


def _fields(d: TensorDescriptor) -> dict:
    return {name: value for name, value in vars(d).items() if name != "base"}


@pytest.fixture(autouse=True)
def empty_store(monkeypatch):
    monkeypatch.setattr(gluon_tiles, "_validated", {})


def test_a_kept_layout_gives_the_descriptor_a_fresh_check_would():
    first, second = _rows(2, 96, 3, 64), _rows(2, 96, 3, 64)
    made = gluon_tiles.row_descriptor(first, 32)
    assert len(gluon_tiles._validated) == 1
    again = gluon_tiles.row_descriptor(second, 32)  # from the kept fields
    assert len(gluon_tiles._validated) == 1
    assert again.base is second and made.base is first
    assert _fields(again) == _fields(_fresh(second, 32)) == _fields(made)


@pytest.mark.parametrize("other", [
    lambda: _rows(2, 97, 3, 64),                          # another length
    lambda: _rows(2, 96, 3, 128),                         # another width
    lambda: _rows(2, 96, 3, 64, torch.float16),           # another dtype
    lambda: torch.randn(2, 3, 96, 64).to(torch.bfloat16),  # contiguous (B, H, T, d): other strides
])
def test_another_layout_is_checked_and_kept_apart(other):
    gluon_tiles.row_descriptor(_rows(2, 96, 3, 64), 32)
    t = other()
    made = gluon_tiles.row_descriptor(t, 32)
    assert len(gluon_tiles._validated) == 2
    assert made.base is t and _fields(made) == _fields(_fresh(t, 32))


def test_other_rows_per_block_are_kept_apart():
    t = _rows(1, 64, 2, 64)
    a, b = gluon_tiles.row_descriptor(t, 32), gluon_tiles.row_descriptor(t, 64)
    assert a.block_shape == [1, 1, 32, 64] and b.block_shape == [1, 1, 64, 64]
    assert gluon_tiles.row_descriptor(t, 32).block_shape == [1, 1, 32, 64]


def test_a_misaligned_tensor_is_refused_every_time():
    """Same dtype, shape and strides as a kept layout, but a base 2 bytes past a 16-byte boundary: the check that the
    kept fields skip must still run for it."""
    store = torch.randn(2 * 3 * 96 * 64 + 8).to(torch.bfloat16)
    aligned = store[:-8].view(2, 96, 3, 64).transpose(1, 2)
    misaligned = store[1:-7].view(2, 96, 3, 64).transpose(1, 2)
    assert aligned.data_ptr() % 16 == 0 and misaligned.data_ptr() % 16 != 0
    gluon_tiles.row_descriptor(aligned, 32)
    for _ in range(2):
        with pytest.raises(AssertionError, match="16-byte aligned"):
            gluon_tiles.row_descriptor(misaligned, 32)
    assert len(gluon_tiles._validated) == 1


def test_the_store_keeps_no_tensor_alive():
    t = _rows(1, 64, 2, 64)
    alive = weakref.ref(t)
    gluon_tiles.row_descriptor(t, 32)
    gluon_tiles.row_descriptor(t, 32)
    del t
    gc.collect()
    assert alive() is None


def test_the_store_starts_over_when_full(monkeypatch):
    monkeypatch.setattr(gluon_tiles, "MAX_KEPT_DESCRIPTORS", 2)
    for T in (64, 65, 66):
        gluon_tiles.row_descriptor(_rows(1, T, 2, 64), 32)
    assert len(gluon_tiles._validated) == 1
