"""TokenLoader and validation_batches: windows, rank slices, exact resume, BOS alignment, bad shards."""

import io
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from data.documents import document_ids, positions_in_document
from data.loader import TokenLoader, read_meta, validation_batches
from data.prepare import prepare_dataset
from data.windows import SplitTokens

SEQ = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A prepared folder: 120 documents of 3 to 60 bytes, 5 shards of 400 tokens per split at most."""
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(1)
    lines = [json.dumps({"text": f"{i}:" + "abcdefghij"[i % 10] * int(rng.integers(1, 58))}) for i in range(120)]
    (root / "docs.jsonl").write_text("\n".join(lines))
    cfg = dict(name="t", source="local", tokenizer="bytes", dir=str(root / "shards"), workers=1,
               paths=[str(root / "docs.jsonl")], shard_tokens=400, val_fraction=0.25)
    return prepare_dataset(cfg, progress=False)


def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_batches_are_windows_of_the_split(shards):
    tokens = SplitTokens(shards, "train")
    stream = np.concatenate([tokens.read(0, tokens.n_tokens)])
    windows = {tuple(stream[k * SEQ:k * SEQ + SEQ + 1]) for k in range((tokens.n_tokens - 1) // SEQ)}
    loader = TokenLoader(shards, "train", batch_size=3, seq_len=SEQ, seed=5)
    for x, y in batches(loader, 10):
        assert x.shape == y.shape == (3, SEQ) and x.dtype == y.dtype == torch.int64
        for row_x, row_y in zip(x, y, strict=True):
            assert torch.equal(row_x[1:], row_y[:-1])
            assert tuple(torch.cat([row_x, row_y[-1:]]).tolist()) in windows


def test_an_epoch_visits_every_window_once_in_a_seeded_order(shards):
    n = TokenLoader(shards, "train", 1, SEQ).windows.count
    loader = TokenLoader(shards, "train", 1, SEQ, shuffle=False)
    in_order = [x for x, _ in batches(loader, n)]
    shuffled = [x for x, _ in batches(TokenLoader(shards, "train", 1, SEQ, seed=0), n)]
    assert sorted(t.flatten().tolist() for t in shuffled) == sorted(t.flatten().tolist() for t in in_order)
    assert [t.tolist() for t in shuffled] != [t.tolist() for t in in_order]
    other_seed = [x for x, _ in batches(TokenLoader(shards, "train", 1, SEQ, seed=1), n)]
    assert [t.tolist() for t in other_seed] != [t.tolist() for t in shuffled]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_slices_of_the_single_process_batch(shards, world_size):
    b, steps = 2, 40  # crosses epoch boundaries
    single = batches(TokenLoader(shards, "train", world_size * b, SEQ, seed=3, prefetch=0), steps)
    per_rank = [batches(TokenLoader(shards, "train", b, SEQ, rank=r, world_size=world_size, seed=3), steps)
                for r in range(world_size)]
    for step in range(steps):
        for which in (0, 1):
            joined = torch.cat([per_rank[r][step][which] for r in range(world_size)])
            assert torch.equal(joined, single[step][which])


@pytest.mark.parametrize("bos_aligned", [False, True])
def test_resumed_loader_continues_the_uninterrupted_stream(shards, bos_aligned):
    make = lambda **kw: TokenLoader(shards, "train", 4, SEQ, seed=7, bos_aligned=bos_aligned, **kw)  # noqa: E731
    reference = batches(make(), 30)
    loader = make(prefetch=3)
    batches(loader, 11)
    state = loader.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the state travels through a checkpoint file
    loader.close()
    resumed = make()
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    for got, want in zip(batches(resumed, 19), reference[11:], strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # The original loader, with batches prefetched past the saved point, rewinds too.
    loader.load_state_dict(state)
    assert torch.equal(loader.next_batch()[0], reference[11][0])


def test_resume_accepts_another_world_size_with_the_same_global_batch(shards):
    single = TokenLoader(shards, "train", 4, SEQ, seed=2)
    batches(single, 5)
    state = single.state_dict()
    expected = batches(single, 3)
    ranks = [TokenLoader(shards, "train", 2, SEQ, rank=r, world_size=2, seed=2) for r in range(2)]
    for loader in ranks:
        loader.load_state_dict(state)
    got = [batches(loader, 3) for loader in ranks]
    for step in range(3):
        assert torch.equal(torch.cat([got[0][step][0], got[1][step][0]]), expected[step][0])


def test_mismatched_states_are_refused(shards):
    state = TokenLoader(shards, "train", 2, SEQ).state_dict()
    with pytest.raises(ValueError, match="seq_len=16, this loader seq_len=8"):
        TokenLoader(shards, "train", 2, 8).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        TokenLoader(shards, "train", 2, SEQ, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="not a multiple"):
        TokenLoader(shards, "train", 3, SEQ).load_state_dict({**state, "next_row": 4})


def naive_document_chunks(stream, eot, seq):
    """(start, end of its own document's part) of each chunk, walking the documents one by one (each
    ends with its end-of-text token)."""
    chunks, begin = [], 0
    for i, token in enumerate(stream):
        if token == eot or i == len(stream) - 1:
            chunks += [(s, min(s + seq, i + 1)) for s in range(begin, i + 1, seq)]
            begin = i + 1
    return [(s, end) for s, end in chunks if s + seq <= len(stream)]


def test_bos_aligned_rows_are_bos_then_one_chunk_of_a_document(shards):
    """Every row is the end-of-text token followed by seq_len tokens of consecutive document text, and
    over one epoch every token of every document is a target in exactly one window whose BOS opens a
    chunk of its own document (long documents included; a short last chunk runs on into the next)."""
    eot = read_meta(shards)["eot_token"]
    tokens = SplitTokens(shards, "train")
    stream = tokens.read(0, tokens.n_tokens)
    chunks = naive_document_chunks(stream, eot, SEQ)
    starts = [s for s, _ in chunks]
    lengths = np.diff(np.concatenate([[-1], np.flatnonzero(stream == eot)]))
    assert lengths.max() > 2 * SEQ  # some documents span several windows
    loader = TokenLoader(shards, "train", 5, SEQ, bos_aligned=True)
    assert loader.windows.count == len(starts)
    expected = Counter(tuple(stream[s:s + SEQ]) for s in starts)
    seen = Counter()
    for x, y in batches(loader, len(starts) // 5):
        assert (x[:, 0] == eot).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        seen.update(tuple(row) for row in y.numpy())
    assert not seen - expected and sum(seen.values()) == 5 * (len(starts) // 5)
    covered = np.zeros(stream.size, dtype=int)
    for s, end in chunks:
        covered[s:end] += 1
    assert covered.max() == 1 and covered[:chunks[-1][1]].min() == 1


def test_validation_batches_are_fixed_and_split_over_ranks(shards):
    one = validation_batches(shards, 4, SEQ, max_batches=3)
    again = validation_batches(shards, 4, SEQ, max_batches=3)
    assert len(one) == 3
    tokens = SplitTokens(shards, "val")
    windows = (tokens.n_tokens - 1) // SEQ
    # the 12 windows used are spread evenly over the split: first and last window included
    spread = [round(k * (windows - 1) / 11) for k in range(12)]
    for i, ((x, y), (x2, y2)) in enumerate(zip(one, again, strict=True)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        for r in range(4):
            row = tokens.read(spread[i * 4 + r] * SEQ, SEQ + 1)
            assert x[r].tolist() == row[:-1].tolist() and y[r].tolist() == row[1:].tolist()
    halves = [validation_batches(shards, 2, SEQ, max_batches=3, rank=r, world_size=2) for r in range(2)]
    for i in range(3):
        assert torch.equal(torch.cat([halves[0][i][0], halves[1][i][0]]), one[i][0])
    everything = validation_batches(shards, 4, SEQ, max_batches=None)
    assert len(everything) == ((tokens.n_tokens - 1) // SEQ) // 4


def test_a_split_smaller_than_one_batch_gives_one_batch_of_every_window(shards):
    windows = (SplitTokens(shards, "val").n_tokens - 1) // SEQ
    assert windows < 1000
    with pytest.warns(UserWarning, match=f"only {windows} window.*one batch of {windows}"):
        small = validation_batches(shards, 1000, SEQ, max_batches=4)
    assert len(small) == 1 and small.note is not None
    x, _ = small[0]
    every = validation_batches(shards, 1, SEQ, max_batches=None)
    assert x.shape == (windows, SEQ) and torch.equal(x, torch.cat([b[0] for b in every]))
    with pytest.warns(UserWarning, match="fewer than one batch of 2000"):
        halves = [validation_batches(shards, 1000, SEQ, max_batches=4, rank=r, world_size=2) for r in range(2)]
    assert [len(h) for h in halves] == [1, 1] and all(h[0][0].shape == (windows // 2, SEQ) for h in halves)
    with pytest.raises(ValueError, match=f"has {windows} window.*fewer than the {windows + 1} processes"):
        validation_batches(shards, 1, SEQ, max_batches=1, world_size=windows + 1)


def test_document_boundaries_inside_packed_windows():
    eot = 9
    x = torch.tensor([[1, 2, 9, 3, 4, 9, 9, 5], [9, 1, 1, 1, 9, 2, 2, 2]])
    ids = document_ids(x, eot)
    pos = positions_in_document(ids)
    for row in range(2):  # reference: a new segment opens at every end-of-text token after position 0
        seg, start = 0, 0
        for t in range(x.shape[1]):
            if t > 0 and x[row, t] == eot:
                seg, start = seg + 1, t
            assert ids[row, t] == seg and pos[row, t] == t - start


def corrupt_copy(shards, tmp_path, edit):
    target = tmp_path / "copy"
    shutil.copytree(shards, target)
    path = target / "train_000001.bin"
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    return target, path


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.__setitem__(slice(0, 4), (123).to_bytes(4, "little")), "magic number 123"),
    (lambda d: d.__setitem__(slice(4, 8), (7).to_bytes(4, "little")), "shard version 7 is not supported"),
    (lambda d: d.__setitem__(slice(8, 12), (999).to_bytes(4, "little")), "header says 999 tokens"),
    (lambda d: d.__delitem__(slice(-6, None)), "truncated or corrupt"),
])
def test_bad_shards_are_named(shards, tmp_path, edit, message):
    target, path = corrupt_copy(shards, tmp_path, edit)
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        TokenLoader(target, "train", 2, SEQ)


def test_shard_that_disagrees_with_meta_is_named(shards, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(shards, target)
    meta = json.loads((target / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["tokens"] += 1
    (target / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"train_000000.bin: 400 uint16 tokens, but meta.json records 401"):
        TokenLoader(target, "train", 2, SEQ)


@pytest.mark.gpu
def test_pinned_prefetched_batches_copy_to_the_gpu(shards):
    loader = TokenLoader(shards, "train", 4, SEQ, seed=4, prefetch=2)
    assert loader.pin_memory  # the default when CUDA is available
    reference = batches(TokenLoader(shards, "train", 4, SEQ, seed=4, prefetch=0, pin_memory=False), 5)
    for want in reference:
        x, y = loader.next_batch()
        assert x.is_pinned() and y.is_pinned()
        x_gpu, y_gpu = x.to("cuda", non_blocking=True), y.to("cuda", non_blocking=True)
        assert torch.equal(x_gpu.cpu(), want[0]) and torch.equal(y_gpu.cpu(), want[1])
    loader.close()
