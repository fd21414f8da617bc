"""kernels/cross_entropy.py under Triton's interpreter: each row's loss and the logits' gradient against float64, on
awkward shapes (one row, a vocabulary of one class, padding, more classes than one step of the row's loop, targets at
either end, large logits), every output element written; its input errors; its custom op's fake implementation; and
the chunked loss of model/loss.py with the kernel taking the chunk's pass equal to PyTorch's."""
import pytest
import torch

from threshold_float64 import poisoned_outputs  # noqa: F401

from kernels.cross_entropy import BLOCK, _cross_entropy_rows, cross_entropy_rows


def _reference(logits: torch.Tensor, targets: torch.Tensor, vocab: int, inv_n: float):
    x = logits.double()[:, :vocab]
    lse = x.logsumexp(-1)
    grad = torch.zeros(logits.shape, dtype=torch.float64)
    grad[:, :vocab] = (x - lse[:, None]).exp()
    grad[torch.arange(len(targets)), targets] -= 1.0
    return lse - x.gather(1, targets[:, None])[:, 0], grad * inv_n


@pytest.mark.parametrize("rows,vocab,width", [(1, 1, 1), (5, 53, 64), (37, 300, 300), (3, BLOCK + 905, BLOCK + 960)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_rows_match_float64(poisoned_outputs, rows, vocab, width, dtype, tol):  # noqa: F811
    g = torch.Generator().manual_seed(rows * 7 + vocab)
    logits = (8 * torch.randn(rows, width, generator=g)).to(dtype)
    logits[0, 0] = 60.0  # a dominant logit: the log-sum-exp must not overflow
    targets = torch.randint(vocab, (rows,), generator=g)
    targets[0] = vocab - 1
    if rows > 1:
        targets[1] = 0
    inv_n = 1.0 / (3 * rows)
    loss, grad = cross_entropy_rows(logits, targets, vocab, inv_n)
    ref_loss, ref_grad = _reference(logits, targets, vocab, inv_n)
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == logits.shape
    assert torch.allclose(loss.double(), ref_loss, rtol=1e-5, atol=1e-4), (loss - ref_loss).abs().max()
    err = (grad.double() - ref_grad).abs().max().item() / inv_n  # gradients are at most inv_n in size
    assert err <= tol, err
    assert not grad.isnan().any() and (grad[:, vocab:] == 0).all()


def test_rows_in_a_wider_buffer():
    """Logits whose rows are apart by more than their width (a view into a wider buffer): only the view is read."""
    g = torch.Generator().manual_seed(3)
    buffer = torch.randn(6, 200, generator=g)
    buffer[:, 130:] = float("nan")
    logits = buffer[:, :130]
    targets = torch.randint(100, (6,), generator=g)
    loss, grad = cross_entropy_rows(logits, targets, 100, 0.5)
    ref_loss, ref_grad = _reference(logits, targets, 100, 0.5)
    assert torch.allclose(loss.double(), ref_loss, atol=1e-5) and torch.allclose(grad.double(), ref_grad, atol=1e-6)


def test_bad_inputs_are_named():
    logits = torch.randn(4, 10)
    targets = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="vocab"):
        cross_entropy_rows(logits, targets, 11, 1.0)
    with pytest.raises(ValueError, match="targets"):
        cross_entropy_rows(logits, targets.int(), 10, 1.0)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        cross_entropy_rows(logits.t(), torch.zeros(10, dtype=torch.int64), 4, 1.0)


def test_custom_op_and_its_fake_agree():
    logits = torch.randn(5, 70)
    targets = torch.randint(64, (5,))
    torch.library.opcheck(_cross_entropy_rows, (logits, targets, 64, 0.2),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("chunk", [7, 64])
def test_chunked_loss_with_the_kernel_equals_pytorchs(monkeypatch, chunk):
    """model/loss.py's chunked loss with the kernel taking each chunk's pass (as on CUDA) against the same loss with
    PyTorch's: value and the gradients of the hidden states and of the head's weight (vocabulary 53, padded to 64)."""
    import model.loss as loss_module

    def run():
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(37, 16, generator=g, requires_grad=True)
        weight = torch.randn(53, 16, generator=g, requires_grad=True)
        targets = torch.randint(53, (37,), generator=g)
        loss = loss_module.cross_entropy(hidden, weight, targets, chunk)
        loss.backward()
        return loss.detach(), hidden.grad, weight.grad

    expected = run()
    calls = []
    monkeypatch.setattr(loss_module, "FUSED", True)
    monkeypatch.setattr(loss_module, "fused_applies", lambda hidden: calls.append(1) or True)
    got = run()
    assert calls
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rows_match_float64_on_gpu():
    """A GPT-2 vocabulary (50,257 classes padded to 50,304) in bf16 on the GPU, as the chunked loss calls it."""
    g = torch.Generator().manual_seed(5)
    logits = (6 * torch.randn(300, 50304, generator=g)).bfloat16()
    targets = torch.randint(50257, (300,), generator=g)
    loss, grad = cross_entropy_rows(logits.cuda(), targets.cuda(), 50257, 1 / 600)
    ref_loss, ref_grad = _reference(logits, targets, 50257, 1 / 600)
    assert torch.allclose(loss.cpu().double(), ref_loss, rtol=1e-5, atol=1e-4)
    assert (grad.cpu().double() - ref_grad).abs().max().item() * 600 <= 1e-2
    assert (grad[:, 50257:] == 0).all()
