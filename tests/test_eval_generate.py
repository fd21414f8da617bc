"""model.generate: decoding with the key/value cache gives the logits of recomputing the whole prefix,
for every attention variant; sampling, stop tokens and bad input."""
import pytest
import torch
from omegaconf import OmegaConf

from model.attention import ATTENTIONS
from model.gpt import GPT

V = 53
LOW_THRESHOLD = {"beta": 0.4}  # so that entries survive the threshold in an untrained model
# Every registered variant, then an option that changes the cached computation.
VARIANTS = [(name, LOW_THRESHOLD if name in ("tda", "tra") else {}) for name in ATTENTIONS] + [
    ("tda", {**LOW_THRESHOLD, "layout": "extra_proj", "power": 1.0}),
]


def tiny_gpt(name: str, **attn) -> GPT:
    torch.manual_seed(0)
    model_cfg = OmegaConf.create(dict(n_layer=2, n_embd=32, n_head=4, mlp_ratio=4, norm_eps=1e-5,
                                      rope_base=10000.0, rope_ntk_factor=1.0, seq_len=16, max_seq_len=24))
    return GPT(model_cfg, OmegaConf.create({"name": name, **attn}), V).eval()


def record_logits(model: GPT) -> list[torch.Tensor]:
    """Every forward call's logits, appended as they come."""
    calls: list[torch.Tensor] = []
    model.register_forward_hook(lambda module, args, output: calls.append(output[0].detach().clone()))
    return calls


@pytest.mark.parametrize("name,attn", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_cached_generation_gives_the_logits_of_the_whole_prefix(name, attn):
    model = tiny_gpt(name, **attn)
    prompt = torch.randint(V, (2, 5), generator=torch.Generator().manual_seed(1))
    calls = record_logits(model)
    out = model.generate(prompt, 8)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    assert [c.shape[1] for c in calls] == [5] + [1] * 7  # one prefill, then one token per step
    step_logits = torch.cat([calls[0][:, -1:]] + calls[1:], dim=1)  # logits that chose tokens 5..12
    with torch.no_grad():
        full, _ = model(out[:, :-1])
    torch.testing.assert_close(step_logits, full[:, 4:], rtol=1e-4, atol=1e-5)
    assert torch.equal(out[:, 5:], full[:, 4:].argmax(-1))  # greedy


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
    (dict(max_new_tokens=30), "max_seq_len"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
    (dict(max_new_tokens=2, top_k=0), "top_k"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_gpt("softmax").generate(torch.zeros(1, 3, dtype=torch.long), **kwargs)
