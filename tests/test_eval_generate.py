"""model.generate: decoding with the static key/value cache gives the tokens and logits of recomputing the whole
prefix, for every attention variant, and ragged batches decode each prompt as if alone; sampling, stop tokens, the
cache's bounds and bad input. (The decoding kernels: test_decode_kernels.py; on a GPU with CUDA graphs:
test_decode_gpu.py.)"""
import pytest
import torch
from omegaconf import OmegaConf

from model.attention import ATTENTIONS
from model.gpt import GPT

V = 53
LOW_THRESHOLD = {"beta": 0.4}  # so that entries survive the threshold in an untrained model
# Every registered variant, then options that change the cached computation (λ's forms reach the decoding kernel
# raw with their transform, or transformed).
VARIANTS = [(name, LOW_THRESHOLD if name in ("tda", "tra") else {}) for name in ATTENTIONS] + [
    ("tda", {**LOW_THRESHOLD, "layout": "extra_proj", "power": 1.0, "lambda_mode": "sigmoid",
             "lambda_per_head": True}),
    ("tda", {**LOW_THRESHOLD, "lambda_mode": "reparam", "beta_learnable": True}),
]


def tiny_gpt(name: str, **attn) -> GPT:
    torch.manual_seed(0)
    model_cfg = OmegaConf.create(dict(n_layer=2, n_embd=32, n_head=4, mlp_ratio=4, norm_eps=1e-5,
                                      rope_base=10000.0, rope_ntk_factor=1.0, seq_len=16, max_seq_len=24))
    return GPT(model_cfg, OmegaConf.create({"name": name, **attn}), V).eval()


def record_logits(model: GPT) -> list[torch.Tensor]:
    """The logits every prefill and decoding step returns, appended as they come (each (B, vocab))."""
    calls: list[torch.Tensor] = []
    for name in ("prefill", "decode_step"):
        method = getattr(model, name)

        def recorded(*args, _method=method, **kwargs):
            logits = _method(*args, **kwargs)
            calls.append(logits.detach().clone())
            return logits

        setattr(model, name, recorded)
    return calls


def greedy_by_recomputation(model: GPT, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding that recomputes the whole prefix for every token, without a cache: (prompt and the new
    tokens, the logits that chose each new token (B, steps, vocab))."""
    seq, chosen = prompt, []
    with torch.no_grad():
        for _ in range(steps):
            last = model(seq)[0][:, -1]
            chosen.append(last)
            seq = torch.cat((seq, last.argmax(-1, keepdim=True)), dim=1)
    return seq, torch.stack(chosen, dim=1)


@pytest.mark.parametrize("name,attn", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_cached_decoding_gives_the_tokens_and_logits_of_recomputing_the_prefix(name, attn):
    """Static cache, one prefill then one token at a time (float64): exactly the tokens of greedy decoding by full
    recomputation, and its logits to rounding."""
    model = tiny_gpt(name, **attn).double()
    prompt = torch.randint(V, (2, 5), generator=torch.Generator().manual_seed(1))
    calls = record_logits(model)
    out = model.generate(prompt, 8)
    assert out.shape == (2, 13) and len(calls) == 8  # one prefill, then one step per token but the last
    want, want_logits = greedy_by_recomputation(model, prompt, 8)
    assert torch.equal(out, want)
    torch.testing.assert_close(torch.stack(calls, dim=1), want_logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,attn", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_a_ragged_batch_decodes_each_prompt_as_if_alone(name, attn):
    """Prompts of 5, 2 and 7 tokens, right-padded into one batch with their lengths: each row's prompt and new
    tokens are those of decoding it alone, then padding."""
    model = tiny_gpt(name, **attn).double()
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(V, (1, n), generator=gen) for n in (5, 2, 7)]
    batch = torch.cat([torch.nn.functional.pad(p, (0, 7 - p.shape[1]), value=V - 1) for p in prompts])
    out = model.generate(batch, 6, lengths=[5, 2, 7], pad_token=-1)
    assert out.shape == (3, 13)
    for row, p in zip(out, prompts):
        alone = model.generate(p, 6)[0]
        assert torch.equal(row[:len(alone)], alone)
        assert (row[len(alone):] == -1).all()


def test_a_forward_beyond_the_cache_is_a_clear_error():
    model = tiny_gpt("tda", **LOW_THRESHOLD)
    cache = model.new_cache(batch=1, length=6)
    with pytest.raises(ValueError, match="0 cached \\+ 7 new tokens exceed the cache's length of 6 positions.*"
                                         "model.max_seq_len=24"):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)
    model.prefill(torch.zeros(1, 5, dtype=torch.long), cache)
    model.decode_step(torch.zeros(1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="6 cached \\+ 1 new tokens exceed the cache's length of 6"):
        model.decode_step(torch.zeros(1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="cache of 25 positions exceeds model.max_seq_len=24"):
        model.new_cache(batch=1, length=25)
    cache = model.new_cache(batch=1, length=6)
    model.prefill(torch.zeros(1, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="2 tokens at once after 2 cached ones.*only when empty"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="a batch of 2 rows does not fit a cache made for 1"):
        model.decode_step(torch.zeros(2, dtype=torch.long), cache)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = tiny_gpt("softmax")
    prompt = torch.randint(V, (3, 4), generator=torch.Generator().manual_seed(2))
    draw = lambda seed: model.generate(prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(model.generate(prompt, 6, temperature=0.7, top_k=1), model.generate(prompt, 6))


def test_sampling_draws_from_the_softmax_of_the_logits():
    model = tiny_gpt("softmax")
    prompt = torch.zeros(4000, 3, dtype=torch.long)
    with torch.no_grad():
        probs = model(prompt[:1])[0][0, -1].div(2.0).softmax(-1)
    tokens = model.generate(prompt, 1, temperature=2.0, generator=torch.Generator().manual_seed(0))[:, -1]
    freq = torch.bincount(tokens, minlength=V).float() / len(tokens)
    assert (freq - probs).abs().max() < 0.03


def test_stop_token_ends_rows_and_pads_them():
    model = tiny_gpt("softmax")
    prompt = torch.randint(V, (2, 4), generator=torch.Generator().manual_seed(3))
    free = model.generate(prompt, 6)
    stop = int(free[0, 5])  # the second token row 0 generates
    out = model.generate(prompt, 6, stop_token=stop)
    assert torch.equal(out[0, :6], free[0, :6]) and (out[0, 6:] == stop).all()
    row1 = free[1, 4:].tolist()
    if stop in row1:  # row 1 also stops at its first stop token
        first = row1.index(stop)
        assert out[1, 4:4 + first + 1].tolist() == row1[:first + 1]


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=30), "prompt of 3 tokens \\+ max_new_tokens=30 = 33 exceeds model.max_seq_len=24"),
    (dict(max_new_tokens=2, lengths=[4]), "lengths must give 1 prompt lengths from 1 to 3"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
    (dict(max_new_tokens=2, top_k=0), "top_k"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_gpt("softmax").generate(torch.zeros(1, 3, dtype=torch.long), **kwargs)
