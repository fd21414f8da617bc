"""The GPT: parameter budgets (SPEC §2), causality, decoding with a cache, input checks."""
import pytest
import torch
from omegaconf import OmegaConf

from model.attention import ATTENTIONS
from model.gpt import GPT

C, H, L, V = 32, 4, 2, 61
d = C // H
VARIANTS = sorted(ATTENTIONS)


def model_cfg(**kw):
    base = dict(n_layer=L, n_embd=C, n_head=H, mlp_ratio=4, norm_eps=1e-5, rope_base=10000.0,
                rope_ntk_factor=1.0, seq_len=32, max_seq_len=64)
    return OmegaConf.create({**base, **kw})


def gpt(name, **attn):
    torch.manual_seed(0)
    return GPT(model_cfg(), OmegaConf.create({"name": name, **attn}), V)


# What each variant adds per layer to softmax's q, k, v, o projections (SPEC §2).
EXTRA_PER_LAYER = {
    "softmax": 0,
    "gated_softmax": C * C,              # W_g: d_model -> n_head * d
    "differential": 4 * d + 2 * d,       # four λ vectors of size d, RMSNorm gain over 2d
    "tda": 1 + 2 * d,                    # λ_raw, RMSNorm gain over 2d (paired layout)
    "tra": d,                            # RMSNorm gain over d
    "rela": 2 * C,                       # gated RMSNorm: gain and gate over d_model
    "sigmoid": H,                        # one bias per head
    "softpick": 0,
    "sink_softmax": H,                   # one sink logit per head
    "ssmax": H,                          # one s per head
}


def test_every_registered_variant_has_a_budget():
    assert set(EXTRA_PER_LAYER) == set(ATTENTIONS)


def test_softmax_parameter_count_is_gpt_with_untied_head():
    per_layer = 4 * C * C + 2 * 4 * C * C + 2 * C  # attention, MLP, two norms
    assert gpt("softmax").num_parameters() == 2 * V * C + L * per_layer + C


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_budget_differs_from_softmax_by_exactly_what_spec_adds(name):
    assert gpt(name).num_parameters() - gpt("softmax").num_parameters() == L * EXTRA_PER_LAYER[name]


@pytest.mark.parametrize("options,extra", [
    ({"layout": "extra_proj"}, 2 * C * C + 1 + d),
    ({"lambda_per_head": True}, H // 2 + 2 * d),
    ({"lambda_mode": "reparam"}, 4 * d + 2 * d),
    ({"beta_learnable": True}, 1 + 2 * d + H // 2),
    ({"norm_gain": False}, 1),
])
def test_tda_option_budgets(options, extra):
    assert gpt("tda", **options).num_parameters() - gpt("softmax").num_parameters() == L * extra


def test_weight_decay_only_on_linear_matrices():
    model = gpt("tda", lambda_mode="reparam", beta_learnable=True)
    decay, no_decay = model.parameter_groups(0.1)
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {n for n, p in model.named_parameters() if id(p) not in linear}
    assert any("lam" in n for n in names) and any("beta" in n for n in names) and "embed.weight" in names


@pytest.mark.parametrize("name", VARIANTS)
def test_attention_scalars_are_never_decayed_and_are_reported(name):
    """A variant's own scalars (``scalars()``: sigmoid's bias, the sink logit, SSMax's s, TDA's λ_raw) sit in the group
    without weight decay, and attention_scalars reports each per layer and head."""
    model = gpt(name)
    decay, no_decay = model.parameter_groups(0.1)
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear
    reported = model.attention_scalars()
    for block in model.blocks:
        own = block.attn.scalars() if hasattr(block.attn, "scalars") else {}
        for key, param in own.items():
            assert any(param is p for p in no_decay["params"]), key
            assert len(reported[f"{key}_per_layer"]) == L
            values = param.tolist()  # one value (λ_raw of one λ per layer) is reported as a float
            assert reported[f"{key}_per_layer"][block.attn.layer] == (values[0] if len(values) == 1 else values)


@pytest.mark.parametrize("name", VARIANTS)
def test_causal_changing_a_token_changes_nothing_before_it(name):
    model = gpt(name).double()
    idx = torch.randint(0, V, (2, 40))
    changed = idx.clone()
    changed[:, 23] = (idx[:, 23] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :23], b[:, :23])
    assert not torch.allclose(a[:, 23:], b[:, 23:])


@pytest.mark.parametrize("name", VARIANTS)
def test_decoding_with_cache_matches_full_forward(name):
    model = gpt(name).double()
    idx = torch.randint(0, V, (2, 29))
    full, _ = model(idx)
    cache = model.new_cache(batch=2, length=29)
    pieces = [model(idx[:, :17], cache=cache)[0]]  # a prompt, then one token at a time
    for t in range(17, 29):
        pieces.append(model(idx[:, t:t + 1], cache=cache)[0])
    assert torch.allclose(torch.cat(pieces, dim=1), full, rtol=1e-10, atol=1e-12)


def test_sequence_longer_than_the_model_allows_is_a_clear_error():
    with pytest.raises(ValueError, match="65 tokens exceeds model.max_seq_len=64"):
        gpt("softmax")(torch.zeros(1, 65, dtype=torch.long))


def test_loss_is_cross_entropy_of_the_logits():
    model = gpt("tda")
    idx = torch.randint(0, V, (3, 20))
    logits, loss = model(idx, idx)
    assert logits.dtype == torch.float32 and logits.shape == (3, 20, V)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, V), idx.reshape(-1)))
    assert abs(float(loss.detach()) - torch.log(torch.tensor(float(V)))) < 0.5  # near uniform at initialisation
