"""RoPE: a rotation (norms kept), relative (scores depend on position differences), NTK scaling."""
import torch

from model.rope import apply_rope, rope_frequencies


def test_rope_keeps_norms_and_depends_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    rot = lambda x, p: apply_rope(x, torch.tensor([p]), 10000.0)  # noqa: E731
    assert torch.allclose(rot(q, 7).norm(), q.norm())
    s1 = (rot(q, 10) * rot(k, 3)).sum()
    s2 = (rot(q, 107) * rot(k, 100)).sum()
    assert torch.allclose(s1, s2)
    assert not torch.allclose(s1, (rot(q, 11) * rot(k, 3)).sum())


def test_ntk_scaling_changes_only_the_frequencies():
    plain, scaled = rope_frequencies(16, 10000.0), rope_frequencies(16, 10000.0, ntk_factor=4.0)
    assert plain[0] == scaled[0] == 1.0                       # the fastest frequency is kept
    assert torch.allclose(scaled[-1], plain[-1] / 4.0 ** (14 / 14), rtol=1e-5)  # slowest stretched by 4
    assert (scaled[1:] < plain[1:]).all()


def test_compiled_rotation_reads_one_table_and_equals_eager():
    """Under torch.compile the (T, d/2) cosines and sines are computed once by their own operator and read by the
    rotation's kernels, not recomputed inside them for every batch row and head (BENCHMARKS.md, "Training
    throughput", has what that cost); the compiled rotation equals the eager one for (T,) and (B, T) positions."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    x = torch.randn(2, 3, 37, 16)
    rot = torch.compile(lambda x, p: apply_rope(x, p, 10000.0, 2.0) * 2, fullgraph=True)
    for positions in (torch.arange(37), torch.stack([torch.arange(37), torch.arange(37) + 5])):
        torch.testing.assert_close(rot(x, positions), apply_rope(x, positions, 10000.0, 2.0) * 2, rtol=0, atol=0)
    torch._dynamo.reset()
    _, code = run_and_get_code(torch.compile(lambda x, p: apply_rope(x, p, 500.0) + 1), x, torch.arange(37))
    code = "\n".join(code)
    assert "rotation_table" in code
    assert "cos" not in code.replace("rotation_table", "") and "sin(" not in code


def test_rotation_keeps_a_projections_layout_and_its_values():
    """A (B, T, H, d) projection viewed as (B, H, T, d) comes out of the rotation in the same layout (what the model's
    q and k are, and so what a compiled model's kernels are traced with: rope.rotate says why it matters), with the
    values of the rotation written out on the (B, H, T, d) view, for (T,) and (B, T) positions; a tensor already
    contiguous in (B, H, T, d) gets the same values."""
    from model.rope import rope_rotation, rotate

    torch.manual_seed(0)
    x = torch.randn(2, 37, 3, 16).transpose(1, 2)  # (B, H, T, d) view of (B, T, H, d)
    for positions in (torch.arange(37), torch.stack([torch.arange(37), torch.arange(37) + 5])):
        cos, sin = rope_rotation(positions, 16, 10000.0)
        c, s = (t.squeeze(-2) if t.dim() == 3 else t.transpose(1, 2) for t in (cos, sin))  # over (B, H, T, d/2)
        x1, x2 = x[..., :8], x[..., 8:]
        expected = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        for inputs in (x, x.contiguous()):
            out = rotate(inputs, cos, sin)
            assert torch.equal(out, expected)
        assert rotate(x, cos, sin).transpose(1, 2).is_contiguous()
        assert not expected.transpose(1, 2).is_contiguous()  # what a plain torch.cat gives, which the check tells apart
