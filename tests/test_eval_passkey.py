"""Passkey prompts put every key where they say; the scorers and the batched log-likelihood are exact."""
import random
import re

import pytest
import torch

from data.tokenizer import get_tokenizer
from evaluation.likelihood import score_continuations
from evaluation.passkey import candidate_keys, greedy_answer_correct, likelihood_correct
from evaluation.passkey_prompt import FILLER, INSTRUCTION, make_prompt
from test_eval_generate import V, tiny_gpt

ENC = get_tokenizer("bytes")


@pytest.mark.parametrize("n_keys", [1, 2, 4])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_prompt_places_each_key_at_its_span_and_the_target_at_its_depth(n_keys, depth):
    length = 1500
    prompt = make_prompt(ENC, length, depth, n_keys, random.Random(n_keys * 10 + int(depth * 10)))
    text = ENC.decode(prompt.tokens)
    assert len(set(prompt.keys)) == n_keys and all(re.fullmatch(r"[1-9]\d{4}", k) for k in prompt.keys)
    room = len(prompt.answer) + 1
    assert length - room - max(len(s) for s in FILLER) < len(prompt.tokens) <= length - room
    assert text.startswith(INSTRUCTION)
    for key, (start, stop) in zip(prompt.keys, prompt.spans):
        assert ENC.decode(prompt.tokens[start:stop]) == f" {key}"
        assert ENC.decode(prompt.tokens[:start]).endswith(" is")
    target = prompt.keys[prompt.target]
    assert ENC.decode(prompt.answer) == f" {target}"
    label = "" if n_keys == 1 else f" number {prompt.target + 1}"
    assert text.endswith(f"\nWhat is the pass key{label}? The pass key{label} is")
    assert f"The pass key{label} is {target}. Remember it. {target} is the pass key{label}." in text
    # depth: the share of filler sentences before the queried key, counted in the text itself
    fillers = [m.start() for m in re.finditer("|".join(re.escape(s) for s in FILLER), text)]
    before = sum(pos < len(ENC.decode(prompt.tokens[:prompt.spans[prompt.target][0]])) for pos in fillers)
    assert before / len(fillers) == pytest.approx(prompt.depth)
    assert abs(prompt.depth - depth) <= 0.5 / len(fillers) + 1e-12


def test_prompt_that_cannot_fit_is_a_value_error():
    with pytest.raises(ValueError, match="too short"):
        make_prompt(ENC, 200, 0.5, 4, random.Random(0))


def test_greedy_scorer_reads_the_first_number():
    assert greedy_answer_correct(" 12345.", "12345")
    assert not greedy_answer_correct(" 123456", "12345")
    assert not greedy_answer_correct(" 1234", "12345")
    assert not greedy_answer_correct(" no number", "12345")
    assert not greedy_answer_correct(" 54321 12345", "12345")


def direct_logprob(model, context, continuation):
    with torch.no_grad():
        logits, _ = model(torch.tensor([context + continuation[:-1]]))
    logp = logits[0].double().log_softmax(-1)
    rows = logp[len(context) - 1:]
    return float(rows[torch.arange(len(continuation)), torch.tensor(continuation)].sum()), \
        rows.argmax(-1).tolist() == continuation


@pytest.mark.parametrize("name", ["softmax", "tda"])
def test_batched_log_likelihood_equals_one_sequence_at_a_time(name):
    model = tiny_gpt(name, **({"beta": 0.4} if name == "tda" else {}))
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(V, (a,), generator=gen).tolist(), torch.randint(V, (b,), generator=gen).tolist())
             for a, b in [(1, 1), (7, 3), (12, 5), (3, 9), (20, 4)]]
    # the greedy continuation of a context must be reported as greedy
    context = pairs[1][0]
    greedy = model.generate(torch.tensor([context]), 3)[0, len(context):].tolist()
    pairs.append((context, greedy))
    got = score_continuations(model, pairs, batch_size=3)
    for (c, x), (logprob, is_greedy) in zip(pairs, got):
        want_lp, want_greedy = direct_logprob(model, c, x)
        assert logprob == pytest.approx(want_lp, rel=1e-5, abs=1e-5)
        assert is_greedy == want_greedy
    assert got[-1][1]


def test_long_contexts_lose_tokens_on_the_left():
    model = tiny_gpt("softmax")  # max_seq_len 24
    context, continuation = list(range(1, 40)), [5, 6, 7]
    (logprob, _), = score_continuations(model, [(context, continuation)])
    kept = (context + continuation)[-25:]
    assert logprob == pytest.approx(direct_logprob(model, kept[:-3], continuation)[0], rel=1e-5)
    with pytest.raises(ValueError, match="continuation"):
        score_continuations(model, [([1], list(range(30)))])


def test_likelihood_scorer_is_right_exactly_when_the_true_key_is_most_likely():
    model = tiny_gpt("softmax")
    prompt = make_prompt(ENC, 400, 0.5, 2, random.Random(3))
    # the tiny model has V = 53 < 257 tokens, so keep the prompt and answers inside its vocabulary
    prompt.tokens = [t % V for t in prompt.tokens][-15:]
    encode = lambda text: [t % V for t in ENC.encode_ordinary(text)]
    keys = candidate_keys(prompt, 5, random.Random(1))
    assert keys[:2] == [prompt.keys[prompt.target], prompt.keys[1 - prompt.target]] and len(set(keys)) == 5
    scores = [direct_logprob(model, prompt.tokens, encode(f" {k}"))[0] for k in keys]
    best = max(range(5), key=scores.__getitem__)
    for first in range(5):
        order = [keys[first]] + [k for i, k in enumerate(keys) if i != first]
        assert likelihood_correct(model, prompt, order, encode, torch.no_grad) == (first == best)


def test_prefix_opens_the_prompt_and_counts_in_its_length():
    """A BOS-aligned run's prompts start with the end-of-text token, within the same length budget."""
    eot = ENC.eot_token
    with_bos = make_prompt(ENC, 900, 0.5, 2, random.Random(3), prefix=[eot])
    plain = make_prompt(ENC, 899, 0.5, 2, random.Random(3))
    assert with_bos.tokens == [eot] + plain.tokens
    assert with_bos.spans == [(a + 1, b + 1) for a, b in plain.spans]
    assert len(with_bos.tokens) <= 900 - len(with_bos.answer) - 1
