"""The passkey retrieval prompt (Mohtashami & Jaggi 2023, "Landmark Attention"), built in tokens so its
length is exact: an instruction, repeated filler sentences, one or more key sentences hidden at chosen
depths, and the question whose answer is the queried key.

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. ...
     The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ...
     The pass key is 68203. Remember it. 68203 is the pass key. ...
    What is the pass key? The pass key is

With n > 1 keys each key has a number (" The pass key number 2 is ..."); the question asks for one of
them, which sits at the requested depth, while the others sit at random depths. Depth is the share
of the filler sentences before the queried key (0 = right after the instruction, 1 = right before the
question).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import tiktoken

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.\n")
FILLER = (" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.",
          " There and back again.")
KEY_DIGITS = 5


@dataclass
class PasskeyPrompt:
    """tokens: the prompt; keys: every key (5 digits); spans: for each key, the [start, stop) token span
    of its first mention (the tokens of " <key>"); target: index of the queried key; depth: the share of
    filler sentences before it; answer: the tokens of " <key>" that should follow the prompt."""

    tokens: list[int]
    keys: list[str]
    spans: list[tuple[int, int]]
    target: int
    depth: float
    answer: list[int]


def random_key(rng: random.Random) -> str:
    """A uniformly random key of KEY_DIGITS digits without a leading zero."""
    return str(rng.randrange(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS))


def _label(n_keys: int, i: int) -> str:
    return "" if n_keys == 1 else f" number {i + 1}"


def make_prompt(enc: tiktoken.Encoding, length: int, depth: float, n_keys: int, rng: random.Random,
                prefix: list[int] | tuple[int, ...] = ()) -> PasskeyPrompt:
    """A prompt that leaves room for its answer and one more token within ``length`` tokens (so greedy
    decoding can show where the number ends), longer than that room minus one filler sentence. Keys are
    distinct and drawn from ``rng``. ``prefix`` (e.g. a BOS token) opens the prompt and counts in ``length``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if n_keys < 1:
        raise ValueError(f"n_keys must be >= 1, got {n_keys}")
    keys: list[str] = []
    while len(keys) < n_keys:
        key = random_key(rng)
        if key not in keys:
            keys.append(key)
    target = rng.randrange(n_keys)
    label = _label(n_keys, target)
    head = enc.encode_ordinary(INSTRUCTION)
    question = enc.encode_ordinary(f"\nWhat is the pass key{label}? The pass key{label} is")
    answer = enc.encode_ordinary(f" {keys[target]}")
    key_parts = [[enc.encode_ordinary(f" The pass key{_label(n_keys, i)} is"), enc.encode_ordinary(f" {key}"),
                  enc.encode_ordinary(f". Remember it. {key} is the pass key{_label(n_keys, i)}.")]
                 for i, key in enumerate(keys)]
    fixed = len(prefix) + len(head) + len(question) + len(answer) + 1 + sum(len(t) for parts in key_parts for t in parts)
    fillers = [enc.encode_ordinary(s) for s in FILLER]
    sentences: list[list[int]] = []
    used = fixed
    while used + len(fillers[len(sentences) % len(fillers)]) <= length:
        sentences.append(fillers[len(sentences) % len(fillers)])
        used += len(sentences[-1])
    if not sentences:
        raise ValueError(f"length={length} is too short for a passkey prompt with {n_keys} key(s): it needs "
                         f"at least {fixed + max(len(f) for f in fillers)} tokens")
    n = len(sentences)
    slots = [round(depth * n)] + [rng.randint(0, n) for _ in range(n_keys - 1)]
    # the d-th placed key (d = 0: the target) goes before filler sentence slots[d]
    key_of = [target] + [i for i in range(n_keys) if i != target]
    order = sorted(range(n_keys), key=lambda d: (slots[d], d))
    tokens = list(prefix) + list(head)
    spans: list[tuple[int, int]] = [(0, 0)] * n_keys
    placed = 0
    for s in range(n + 1):
        while placed < n_keys and slots[order[placed]] == s:
            k = key_of[order[placed]]
            intro, digits, outro = key_parts[k]
            tokens += intro
            spans[k] = (len(tokens), len(tokens) + len(digits))
            tokens += digits + outro
            placed += 1
        if s < n:
            tokens += sentences[s]
    tokens += question
    return PasskeyPrompt(tokens, keys, spans, target, slots[0] / n, answer)
