"""model.loss: the chunked cross-entropy equals the plain one (value, and the gradients of hidden states and the head's
weight), whatever the chunk against the token count, and a model with trainer.loss_chunk trains like one without."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from model.gpt import GPT
from model.loss import VOCAB_ALIGN, cross_entropy

N, D, V = 37, 16, 53


def _inputs(dtype):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, D, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, D, generator=generator, dtype=dtype, requires_grad=True)
    return hidden, weight, torch.randint(V, (N,), generator=generator)


def _loss_and_grads(chunk, dtype, upstream=1.0):
    hidden, weight, targets = _inputs(dtype)
    loss = cross_entropy(hidden, weight, targets, chunk)
    (loss * upstream).backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("chunk", [1, 8, N, 64])  # one token; a chunk not dividing N; exactly N; more than N
def test_chunked_cross_entropy_equals_the_plain_one_with_its_gradients(chunk, dtype, tolerance):
    want = _loss_and_grads(None, dtype, upstream=0.3)  # an incoming gradient other than 1 is applied in backward
    got = _loss_and_grads(chunk, dtype, upstream=0.3)
    hidden, weight, targets = _inputs(dtype)
    assert torch.allclose(want[0], F.cross_entropy(F.linear(hidden, weight), targets), rtol=0, atol=tolerance)
    for name, w, g in zip(("loss", "hidden grad", "weight grad"), want, got):
        assert g.dtype == w.dtype, name
        assert (g - w).abs().max() <= tolerance * max(1.0, float(w.abs().max())), name


def test_chunked_cross_entropy_without_gradients_is_the_same_number():
    hidden, weight, targets = _inputs(torch.float64)
    with torch.no_grad():
        assert abs(float(cross_entropy(hidden, weight, targets, 5)) - float(cross_entropy(hidden, weight, targets))) \
            < 1e-13


def test_a_chunk_of_no_tokens_is_refused():
    hidden, weight, targets = _inputs(torch.float32)
    with pytest.raises(ValueError, match="chunk must be a number of tokens >= 1, got 0"):
        cross_entropy(hidden, weight, targets, 0)


def test_a_model_with_a_chunked_loss_gives_the_plain_loss_and_gradients():
    cfg = OmegaConf.create(dict(n_layer=1, n_embd=32, n_head=4, mlp_ratio=4, norm_eps=1e-5, rope_base=10000.0,
                                rope_ntk_factor=1.0, seq_len=16, max_seq_len=16))
    torch.manual_seed(0)
    model = GPT(cfg, OmegaConf.create({"name": "softmax"}), V).double()
    idx = torch.randint(V, (3, 17))
    results = []
    for chunk in (None, 10):
        model.loss_chunk = chunk
        model.zero_grad()
        logits, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        assert (logits is None) == (chunk is not None)  # the chunked path never forms all logits
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert abs(float(plain - chunked)) < 1e-13
    assert all(torch.allclose(a, b, rtol=0, atol=1e-13) for a, b in zip(plain_grads, chunked_grads))


@pytest.mark.parametrize("vocab", [VOCAB_ALIGN, VOCAB_ALIGN + 1, 2 * VOCAB_ALIGN - 1])
def test_the_padded_vocabulary_changes_nothing_whatever_the_vocabulary(vocab):
    """The chunked path pads the head to a multiple of VOCAB_ALIGN: none, one row short of a multiple (63 zero rows),
    one row of padding; the loss and both gradients stay the plain ones, the weight's gradient of the true shape."""
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, D, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, D, generator=generator, dtype=torch.float64, requires_grad=True)
    last = torch.tensor([vocab - 1])  # the last true class, next to the padding
    targets = torch.cat([last, torch.randint(vocab, (N - 1,), generator=generator)])
    results = []
    for chunk in (None, 8):
        hidden.grad = weight.grad = None
        loss = cross_entropy(hidden, weight, targets, chunk)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    for want, got in zip(*results):
        assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gradients_two_spellings_give_the_same_bits(dtype, monkeypatch):
    """_logits_gradient computes in place eagerly and as one elementwise expression under torch.compile (which fuses
    it): the same float32 operations, so the same bits, with −inf padding columns and a target in the last class."""
    from model import loss as loss_module

    generator = torch.Generator().manual_seed(2)
    wide = torch.randn(9, 70, generator=generator) * 4
    wide[:, 64:] = float("-inf")
    lse = wide.logsumexp(dim=-1)
    targets = torch.cat([torch.tensor([63]), torch.randint(64, (8,), generator=generator)])
    spelled = {}
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
        spelled[compiling] = loss_module._logits_gradient(wide.clone(), lse, targets, 37, dtype)
    assert spelled[False].dtype == spelled[True].dtype == dtype
    assert torch.equal(spelled[False], spelled[True])
    assert (spelled[True][:, 64:] == 0).all() and (spelled[True][0, 63] < 0)


def test_the_compiled_chunked_loss_equals_the_plain_one():
    """torch.compile of the chunked loss (the spelling the compiler fuses, the padded vocabulary) against the plain
    loss in eager mode: value and both gradients."""
    want = _loss_and_grads(None, torch.float32)
    hidden, weight, targets = _inputs(torch.float32)
    loss = torch.compile(cross_entropy, fullgraph=True)(hidden, weight, targets, 8)
    loss.backward()
    for name, w, g in zip(("loss", "hidden grad", "weight grad"), want, (loss.detach(), hidden.grad, weight.grad)):
        assert (g - w).abs().max() <= 2e-6 * max(1.0, float(w.abs().max())), name
