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
